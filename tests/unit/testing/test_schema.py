"""The simulator's minimal schema instances validate against their schema (checked by ``jsonschema``)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from labgate.testing.schema import instance

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@st.composite
def strings(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    choice = draw(st.sampled_from(["plain", "format", "length", "enum"]))
    if choice == "format":
        schema["format"] = draw(st.sampled_from(["date", "date-time", "email", "uri", "uuid", "time"]))
    elif choice == "length":
        low = draw(st.integers(0, 20))
        schema["minLength"] = low
        if draw(st.booleans()):
            schema["maxLength"] = draw(st.integers(low, 30))
    elif choice == "enum":
        schema["enum"] = draw(st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True))
    return schema


@st.composite
def numbers(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["integer", "number"]))
    schema: dict[str, Any] = {"type": kind}
    low = draw(st.none() | st.integers(-1000, 1000))
    if low is not None:
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        high = (low if low is not None else draw(st.integers(-1000, 1000))) + draw(st.integers(30, 500))
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = high
    if draw(st.booleans()):
        schema["multipleOf"] = draw(st.integers(1, 10))
    return schema


LEAVES = st.one_of(strings(), numbers(), st.just({"type": "boolean"}), st.just({"type": "null"}),
                   st.builds(lambda v: {"const": v}, st.integers() | st.text(max_size=4)), st.just({}))


def containers(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def objects(draw: st.DrawFn) -> dict[str, Any]:
        properties = draw(st.dictionaries(NAMES, inner, max_size=4))
        required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True)) if properties else []
        schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
        if draw(st.booleans()):
            schema["additionalProperties"] = False
        elif draw(st.booleans()):
            schema["minProperties"] = draw(st.integers(0, 3))
        return schema

    @st.composite
    def arrays(draw: st.DrawFn) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": draw(inner), "minItems": draw(st.integers(0, 3))}
        if draw(st.booleans()):
            schema["maxItems"] = schema["minItems"] + draw(st.integers(0, 3))
        return schema

    @st.composite
    def unions(draw: st.DrawFn) -> dict[str, Any]:
        options = draw(st.lists(inner, min_size=1, max_size=3))
        return {draw(st.sampled_from(["anyOf", "oneOf"])): options} if len(options) == 1 else {"anyOf": options}

    nullable = inner.map(lambda s: {**s, "type": [s["type"], "null"]} if isinstance(s.get("type"), str)
                         and s["type"] != "null" and "enum" not in s else s)
    return st.one_of(objects(), arrays(), unions(), nullable)


SCHEMAS = st.recursive(LEAVES, containers, max_leaves=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCHEMAS, st.text(max_size=12))
@example({"type": "number", "exclusiveMinimum": 0, "multipleOf": 2}, "")  # 5e-324 / 2 underflows to 0
@example({"type": "integer", "exclusiveMinimum": 3, "maximum": 40, "multipleOf": 4}, "")
def test_the_instance_validates_against_its_schema(schema: dict[str, Any], text: str) -> None:
    jsonschema.validate(instance(schema, text), schema)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(NAMES, SCHEMAS, min_size=1, max_size=3), NAMES)
def test_refs_to_defs_are_followed(defs: dict[str, Any], root: str) -> None:
    name = sorted(defs)[0]
    schema = {"$defs": defs, "type": "object", "properties": {root: {"$ref": f"#/$defs/{name}"}},
              "required": [root], "additionalProperties": False}
    jsonschema.validate(instance(schema), schema)


def test_a_pydantic_model_schema_gets_its_required_fields() -> None:
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str
        population: int = pydantic.Field(ge=1)

    class Answer(pydantic.BaseModel):
        city: City
        cities: list[City] = pydantic.Field(min_length=1)
        note: str | None = None

    schema = Answer.model_json_schema()
    value = instance(schema, "Oslo")
    Answer.model_validate(value)
    assert value["city"] == {"name": "Oslo", "population": 1}
    assert "note" not in value


def test_a_recursive_schema_ends() -> None:
    schema = {"$defs": {"node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/node"},
                                                                                     {"type": "null"}]}},
                                 "required": ["next"]}}, "$ref": "#/$defs/node"}
    value = instance(schema)
    jsonschema.validate(value, schema)


def test_open_objects_carry_the_text_as_query_as_before() -> None:
    assert instance({"type": "object"}, "find cats") == {"query": "find cats"}
    assert instance({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
                    "find cats") == {"query": "find cats"}
