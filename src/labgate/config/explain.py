"""Schema errors in plain words: pydantic's errors → :class:`Problem` s a user can act on.

A problem names the key path as the user wrote it (``providers.local.models[0]``),
says what was expected in the config's terms ("expected a model name or a
mapping with `name`", "must be at least 1"), and suggests the closest name
for an unknown key or value. Pydantic's internals (class names, "valid
tuple", union branch tags) never reach the message, and one mistake is one
problem even where pydantic reports it once per union branch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, get_origin

from pydantic import BaseModel, ValidationError

from labgate.config.problems import Problem, closest
from labgate.config.reader import key_path, line_of
from labgate.config.schema.providers import ModelConfig

_UNKNOWN = object()  # the input under this part of the path is not known (a validator reshaped it)
# A model a user writes in a short form too: what to say when the value has neither shape.
SHAPES: dict[type[BaseModel], str] = {ModelConfig: "expected a model name or a mapping with `name`"}

_PLAIN = {
    "missing": "a required key is missing",
    "extra_forbidden": "unknown key",
    "string_type": "expected text",
    "string_too_short": "must not be empty",
    "string_too_long": "is too long (at most {max_length} characters)",
    "string_pattern_mismatch": "does not match the pattern {pattern}",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "literal_error": "expected {expected}",
    "enum": "expected {expected}",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "set_type": "expected a list",
    "frozen_set_type": "expected a list",
    "too_short": "needs at least {min_length} item(s)",
    "too_long": "may have at most {max_length} item(s)",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "date_type": "expected a date (YYYY-MM-DD)",
    "date_parsing": "expected a date (YYYY-MM-DD)",
    "date_from_datetime_parsing": "expected a date (YYYY-MM-DD)",
    "date_from_datetime_inexact": "expected a date (YYYY-MM-DD)",
    "datetime_type": "expected a date and time (ISO 8601)",
    "datetime_parsing": "expected a date and time (ISO 8601)",
    "datetime_from_date_parsing": "expected a date and time (ISO 8601)",
    "url_type": "expected a URL",
    "url_parsing": "expected a URL",
    "url_scheme": "expected a URL with scheme {expected_schemes}",
}
_QUOTED = re.compile(r"'([^']*)'")


def explain(exc: ValidationError, model: type[BaseModel], data: Any, *, file: str, prefix: str = "",
            lines: Mapping[str, int] | None = None) -> list[Problem]:
    """One plain problem per distinct mistake in ``exc`` (``data`` is what was validated)."""
    out: dict[tuple[str, str], Problem] = {}
    alternatives: dict[str, list[str]] = {}  # path → what each branch of a union there expected
    for error in exc.errors(include_url=False):
        loc, key_error, tagged = _clean(error["loc"], data)
        path = prefix
        for part in loc:
            path = key_path(path, part)
        message, suggestion = _message(model, error, loc)
        if key_error:
            message = "keys here must be text (put the key in quotes)"
        if tagged and message.startswith("expected "):  # one problem per union: "expected A or B"
            seen = alternatives.setdefault(path, [])
            out.pop((path, "expected " + " or ".join(seen)), None)
            if message.removeprefix("expected ") not in seen:
                seen.append(message.removeprefix("expected "))
            message = "expected " + " or ".join(seen)
        line = line_of(path, lines or {})
        out.setdefault((path, message), Problem(file, path, message, suggestion=suggestion, line=line))
    # A union branch that got inside the value (`[0]` of a list) explains better than one that did not.
    deeper = {p for p in alternatives for q in alternatives if q.startswith((p + ".", p + "["))}
    return [p for (path, message), p in out.items()
            if not (path in deeper and message == "expected " + " or ".join(alternatives[path]))]


def _clean(loc: tuple[int | str, ...], data: Any) -> tuple[list[int | str], bool, bool]:
    """The error's location as the user's key path (union branch tags dropped); whether it is about a
    mapping key; whether a tag was dropped (the error is one branch of a union)."""
    parts: list[int | str] = []
    key_error = tagged = False
    current: Any = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if part == "[key]":
            key_error = True
            continue
        if current is _UNKNOWN:
            parts.append(part)
        elif isinstance(part, int) and isinstance(current, dict) and part in current:
            parts.append(str(part))  # a mapping key the user wrote as a number
            current = current[part]
        elif isinstance(part, int):
            parts.append(part)
            inside = isinstance(current, list | tuple) and 0 <= part < len(current)
            current = current[part] if inside else _UNKNOWN  # a mapping a validator turned into a list
        elif isinstance(current, dict) and (part in current or last):
            parts.append(part)
            current = current.get(part, _UNKNOWN)
        else:  # a union branch tag (``str``, ``function-after[...]``), not a key the user wrote
            tagged = True
    return parts, key_error, tagged


def _message(model: type[BaseModel], error: Any, loc: list[int | str]) -> tuple[str, str | None]:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        hint = closest(str(loc[-1]), fields_at(model, loc[:-1])) if loc else []
        return "unknown key", hint[0] if hint else None
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        target = _model_at(model, loc)
        if target in SHAPES:
            return SHAPES[target], None
    if kind == "missing" and loc:
        return f"`{loc[-1]}` is required", None
    if kind in ("value_error", "assertion_error"):
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, "), None
    template = _PLAIN.get(kind)
    if template is None:
        return _fallback(str(error["msg"])), None
    try:
        message = template.format(**{k: _number(v) for k, v in ctx.items()})
    except (KeyError, IndexError):
        message = _fallback(str(error["msg"]))
    suggestion = None
    if kind in ("literal_error", "enum") and isinstance(error.get("input"), str):
        hint = closest(error["input"], _QUOTED.findall(str(ctx.get("expected", ""))), n=1)
        suggestion = hint[0] if hint else None
    return message, suggestion


def _number(value: Any) -> Any:
    """``0.0`` → ``0``: the limit as a user would write it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _fallback(msg: str) -> str:
    msg = re.sub(r"^Input should be (a valid )?", "expected ", msg)
    msg = re.sub(r" or instance of \w+", "", msg)
    return re.sub(r", (unable to|got|input).*$", "", msg)


def fields_at(model: type[BaseModel], loc: list[int | str]) -> list[str]:
    """The keys allowed at ``loc`` inside ``model`` (for "did you mean")."""
    current = _model_at(model, loc)
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _model_at(model: type[BaseModel], loc: list[int | str]) -> Any:
    """The model class that validates the value at ``loc`` (None when it is not a model)."""
    current: Any = model
    item = False  # the previous part was a dict or sequence field: this part is a key or an index
    for part in loc:
        if item:
            item = False
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        current, item = _model_of(annotation), get_origin(annotation) in (dict, tuple, list)
    return current


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
