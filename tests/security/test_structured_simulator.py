"""Hostile schemas against the simulator, which now generates an instance of every tool / output schema.

It runs inside ``labgate demo``, so any schema a client sends reaches it: a
``minItems: 10**9``, a self-referencing ``$ref``, nested arrays of a thousand
items, or bounds past what floats hold must give a bounded answer (or a 400),
never a 500, a hang or unbounded memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgate.testing import Simulator
from labgate.testing.schema import MAX_STRING, MAX_VALUES

pytestmark = pytest.mark.timeout(120)
USER = [{"role": "user", "content": "find some cats"}]
MAX_ANSWER_BYTES = 64 * (MAX_VALUES + MAX_STRING)  # what a bounded instance can take, generously


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator().run_in_thread() as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=20) as client:
        yield client


def bodies(schema: Any) -> list[tuple[str, dict[str, Any]]]:
    """The four places a schema reaches the simulator: tools and structured output, in both dialects."""
    return [
        ("/v1/chat/completions", {"model": "m", "messages": USER, "tools": [
            {"type": "function", "function": {"name": "f", "parameters": schema}}]}),
        ("/v1/chat/completions", {"model": "m", "messages": USER, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
        ("/v1/messages", {"model": "m", "max_tokens": 64, "messages": USER,
                          "tools": [{"name": "f", "input_schema": schema}]}),
        ("/v1/messages", {"model": "m", "max_tokens": 64, "messages": USER,
                          "output_config": {"format": {"type": "json_schema", "schema": schema}}}),
    ]


def check(http: httpx2.Client, sim: Simulator, schema: Any) -> None:
    for path, body in bodies(schema):
        started = time.monotonic()
        response = http.post(sim.url + path, content=orjson.dumps(body),
                             headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
        assert response.status_code in (200, 400), (path, response.status_code, response.text[:300])
        assert len(response.content) < MAX_ANSWER_BYTES
        assert time.monotonic() - started < 10
        orjson.loads(response.content)


HUGE = 10**9
ARRAY = {"type": "array", "minItems": 1000, "items": {"type": "string", "minLength": 1000}}


@pytest.mark.parametrize("schema", [
    {"type": "array", "minItems": HUGE, "items": {"type": "string"}},
    {"type": "string", "minLength": HUGE},
    {"type": "object", "minProperties": HUGE},
    {"type": "object", "properties": {"a": {"type": "array", "minItems": 1000, "items": ARRAY}}, "required": ["a"]},
    {"$ref": "#"},
    {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"type": "integer", "minimum": 1e308},
    {"type": "integer", "exclusiveMinimum": 1e300, "multipleOf": 1e-300},
    {"type": "number", "minimum": 1e308, "multipleOf": 1e-308},
    {"type": "integer", "minimum": 2**62, "multipleOf": 3},
    {"type": "array", "minItems": 50, "uniqueItems": True, "items": {"type": "integer", "minimum": 2**63 - 10}},
    {"allOf": [{"$ref": "#/nowhere"}, 5, None]},
    {"anyOf": []},
    {"type": ["unknown", 7]},
    {"properties": "x", "required": [1, None], "items": 3},
], ids=lambda s: orjson.dumps(s).decode()[:60])
def test_hostile_schemas_get_bounded_answers(http: httpx2.Client, sim: Simulator, schema: Any) -> None:
    check(http, sim, schema)


KEYWORDS = st.sampled_from(["type", "properties", "required", "items", "prefixItems", "minItems", "minLength",
                            "maxLength", "minProperties", "minimum", "maximum", "exclusiveMinimum", "multipleOf",
                            "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "additionalProperties",
                            "uniqueItems", "format"])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["object", "array", "string", "integer", "number", "#", "#/$defs/a", "date"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYWORDS | st.text(max_size=3), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.dictionaries(KEYWORDS, VALUES, max_size=6))
def test_random_schemas_get_bounded_answers(http: httpx2.Client, sim: Simulator, schema: dict[str, Any]) -> None:
    check(http, sim, schema)
