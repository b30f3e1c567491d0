"""A minimal valid instance of a JSON schema: what the simulator answers to tools and structured output.

:func:`instance` covers the vocabulary that tool and structured-output schemas
use (OpenAI strict mode, Anthropic structured outputs, pydantic's
``model_json_schema()``): ``type`` (one or a list), ``enum``, ``const``,
``properties``/``required``, ``additionalProperties``, ``minProperties``,
``items``/``prefixItems``/``minItems``, ``minLength``/``maxLength``,
``format`` (date, date-time, time, email, uri, uuid), numeric bounds and
``multipleOf``, ``anyOf``/``oneOf`` (the first branch), ``allOf`` (merged),
and local ``$ref`` (``#/$defs/…``, ``#/definitions/…``). ``pattern`` and
``not`` are not solved: such a slot gets the plain value.

"Minimal" means only required properties and the fewest items; every
unconstrained string slot holds ``text`` (the simulator's reply or the
user's question), so a test can see what reached the model. An object with
no declared properties that admits any key gets ``{"query": text}``, as the
simulator always answered tool calls before it read schemas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 32  # $ref chains and nesting deeper than this end in null (a recursive schema's base case)
# A hostile schema (minItems: 10**9, nested arrays of 1000 items) must not make the simulator
# allocate without bound: an instance costs one unit per value plus one per string character,
# at most MAX_VALUES units in all (past that, null and shorter arrays); a string is at most
# MAX_STRING characters; integers stay within 64 bits (what orjson can write).
MAX_VALUES = 100_000
MAX_STRING = 10_000
_INT_LIMIT = 2**63 - 1
_FORMATS = {"date": "2026-01-01", "date-time": "2026-01-01T00:00:00Z", "time": "00:00:00Z",
            "email": "sim@example.com", "uri": "https://example.com/", "uuid": "00000000-0000-4000-8000-000000000000"}
_TYPE_ORDER = ("object", "array", "string", "integer", "number", "boolean", "null")


def instance(schema: Any, text: str = "sim") -> Any:
    """A value valid against ``schema`` (a JSON schema as parsed JSON), smallest first."""
    return _Generator(schema if isinstance(schema, Mapping) else {}, text).value(schema, 0)


class _Generator:
    def __init__(self, root: Mapping[str, Any], text: str) -> None:
        self.root = root
        self.text = text
        self.budget = MAX_VALUES

    def value(self, schema: Any, depth: int) -> Any:
        self.budget -= 1
        if depth > MAX_DEPTH or self.budget < 0:
            return None
        if schema is True or schema is None:
            return {}
        if not isinstance(schema, Mapping):
            return None
        if isinstance(schema.get("$ref"), str):
            return self.value(self._resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value(_merge(rest, options[0]), depth + 1)
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = _merge(merged, self._resolve(part["$ref"]) if isinstance(part, Mapping)
                                and isinstance(part.get("$ref"), str) else part)
            return self.value(merged, depth + 1)
        kind = _kind(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            try:
                number = _number(schema, integer=kind == "integer")
            except (OverflowError, ValueError, ZeroDivisionError):
                return 0  # bounds beyond what floats hold: a hostile schema, answered with 0
            if isinstance(number, int):
                return max(-_INT_LIMIT, min(_INT_LIMIT, number))
            return number if math.isfinite(number) else 0
        if kind == "boolean":
            return False
        return None

    def _resolve(self, ref: str) -> Any:
        node: Any = self.root
        if not ref.startswith("#"):
            return {}
        for part in ref[1:].split("/")[1:] if ref != "#" else ():
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, Mapping) else None
        return node if node is not None else {}

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        given = schema.get("properties")
        properties: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        required = [k for k in schema.get("required") or () if isinstance(k, str)]
        out = {key: self.value(properties.get(key, _extra(schema)), depth + 1) for key in required}
        wanted = _size(schema.get("minProperties"))
        for key, sub in properties.items():
            if len(out) >= wanted:
                break
            out.setdefault(key, self.value(sub, depth + 1))
        extra = schema.get("additionalProperties", True)
        if not properties and not required and extra is True and "patternProperties" not in schema:
            out = {"query": self.text}
        i = 0
        while len(out) < wanted and extra is not False and self.budget > 0:
            out.setdefault(f"key{i}", self.value(_extra(schema), depth + 1))
            i += 1
        return out

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        given = schema.get("prefixItems")
        prefix: list[Any] = given if isinstance(given, list) else []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        size = _size(schema.get("minItems"))
        out = [self.value(prefix[i], depth + 1) for i in range(min(size, len(prefix)))]
        if size > len(out):
            before = self.budget
            element = self.value(items, depth + 1)
            cost = max(before - self.budget, 1)  # each copy weighs what the element did
            count = min(size - len(out) - 1, max(self.budget // cost, 0)) + 1
            self.budget -= (count - 1) * cost
            out.extend(_distinct(element, count, schema.get("uniqueItems") is True))
        return out

    def _string(self, schema: Mapping[str, Any]) -> str:
        fmt = schema.get("format")
        value = _FORMATS.get(fmt, self.text) if isinstance(fmt, str) else self.text
        low, high = min(_size(schema.get("minLength")), MAX_STRING), schema.get("maxLength")
        if len(value) < low:
            value += "x" * (low - len(value))
        if isinstance(high, int) and len(value) > high:
            value = value[:max(high, 0)]
        self.budget -= len(value)
        return value


def _size(value: Any) -> int:
    """A size keyword (minItems, minLength, minProperties) as a count: at most MAX_VALUES, else 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, min(value, MAX_VALUES))
    return 0


def _kind(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        listed = [k for k in _TYPE_ORDER if k in kind]
        return listed[0] if listed else None
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _extra(schema: Mapping[str, Any]) -> Any:
    extra = schema.get("additionalProperties", True)
    return extra if isinstance(extra, Mapping) else {}


def _merge(a: Mapping[str, Any], b: Any) -> dict[str, Any]:
    """Two schemas' keywords together; properties and required are unions (enough for allOf of objects)."""
    out = dict(a)
    if not isinstance(b, Mapping):
        return out
    for key, value in b.items():
        if key == "properties" and isinstance(out.get(key), Mapping) and isinstance(value, Mapping):
            out[key] = {**out[key], **value}
        elif key == "required" and isinstance(out.get(key), list) and isinstance(value, list):
            out[key] = [*out[key], *(v for v in value if v not in out[key])]
        else:
            out[key] = value
    return out


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    """The value closest to 0 within the bounds (and a multiple of ``multipleOf``)."""
    low, high = schema.get("minimum"), schema.get("maximum")
    xlow, xhigh = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    step = schema.get("multipleOf")
    step = step if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0 else None
    if integer:
        step = step if step is not None and float(step).is_integer() else (step or 1)
    value: float = 0
    lower = _bound(low, xlow, up=True, integer=integer)
    upper = _bound(high, xhigh, up=False, integer=integer)
    if lower is not None and value < lower:
        value = lower
    if upper is not None and value > upper:
        value = upper
    if step is not None:
        k = math.ceil(value / step) if lower is not None and value == lower else math.floor(value / step)
        if lower is not None and k * step < lower:  # value / step underflowed (a tiny exclusive bound)
            k += 1
        value = k * step
        if upper is not None and value > upper:
            value = (k - 1) * step
    if integer and float(value).is_integer():
        return int(value)
    return value


def _bound(inclusive: Any, exclusive: Any, *, up: bool, integer: bool) -> float | None:
    numbers = [v for v in (inclusive, exclusive) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return None
    bound = max(numbers) if up else min(numbers)
    strict = isinstance(exclusive, (int, float)) and not isinstance(exclusive, bool) and exclusive == bound
    if integer:
        bound = math.floor(bound) + 1 if up and (strict or not float(bound).is_integer()) else (
            math.ceil(bound) - 1 if not up and (strict or not float(bound).is_integer()) else bound)
        return int(bound)
    if strict:
        bound = math.nextafter(bound, math.inf if up else -math.inf)
    return float(bound)


def _distinct(element: Any, count: int, unique: bool) -> list[Any]:
    """``count`` copies of ``element``; distinct values when the array needs unique items."""
    if not unique:
        return [element] * count
    if isinstance(element, str):
        return [element + (str(i) if i else "") for i in range(count)]
    if isinstance(element, int) and not isinstance(element, bool):
        return [element + i for i in range(count)]
    return [element] * count
