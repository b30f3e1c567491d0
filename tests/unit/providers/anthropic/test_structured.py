"""Structured output across dialects, and response ids in the client's dialect.

OpenAI ``response_format: json_schema`` ⇄ Anthropic ``output_config.format``
(and the older ``output_format``): translated both ways, never dropped; what
has no counterpart (``json_object`` towards Anthropic) is refused naming the
field. Golden pairs: ``golden/request-structured-output*.json``,
``golden/response-structured-output.json``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.errors import RequestError
from labgate.providers.anthropic.inbound import messages_to_chat_request
from labgate.providers.anthropic.translate import (
    CHAT_ID_PREFIX,
    MESSAGE_ID_PREFIX,
    OUTPUT_SCHEMA_NAME,
    chat_request_to_messages,
    dialect_id,
)
from labgate.server.anthropic import check_request

KEYS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12)
# Schemas are carried as opaque JSON objects: any object must arrive unchanged.
SCHEMAS = st.dictionaries(KEYS, JSON, max_size=5)


def to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    return chat_request_to_messages(body, model="claude-x", default_max_tokens=64, stream=False)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def messages(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}


def json_schema(schema: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, **extra}}


# ---------------------------------------------------------------- OpenAI client → Anthropic model


@settings(max_examples=200, deadline=None)
@given(SCHEMAS, st.booleans())
def test_any_json_schema_becomes_anthropic_structured_output(schema: dict[str, Any], strict: bool) -> None:
    out = to_anthropic(chat(response_format=json_schema(schema, strict=strict)))
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    # and back: the schema an OpenAI-dialect model is asked for is the same one, strict
    back, native_only = messages_to_chat_request(out)
    assert native_only is None
    assert back["response_format"] == {"type": "json_schema", "json_schema": {
        "name": OUTPUT_SCHEMA_NAME, "schema": schema, "strict": True}}


def test_text_response_format_adds_nothing() -> None:
    assert "output_config" not in to_anthropic(chat(response_format={"type": "text"}))


@pytest.mark.parametrize(("response_format", "param"), [
    ({"type": "json_object"}, "response_format.type"),
    ({"type": "grammar", "grammar": "root ::= x"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}, "response_format.json_schema.schema"),
    ("json_object", "response_format"),
])
def test_what_anthropic_cannot_honour_is_refused_naming_the_field(response_format: Any, param: str) -> None:
    with pytest.raises(RequestError) as info:
        to_anthropic(chat(response_format=response_format))
    assert (info.value.status, info.value.param) == (400, param)


# ---------------------------------------------------------------- Anthropic client → OpenAI-dialect model


@settings(max_examples=200, deadline=None)
@given(SCHEMAS, st.sampled_from(["output_config", "output_format"]), st.booleans())
def test_structured_output_is_translated_never_dropped(schema: dict[str, Any], field: str, effort: bool) -> None:
    fmt = {"type": "json_schema", "schema": schema}
    if field == "output_config":
        body = messages(output_config={"format": fmt, **({"effort": "high"} if effort else {})})
    else:
        body = messages(output_format=fmt)
    check_request(body)
    out, native_only = messages_to_chat_request(body)
    assert native_only is None  # an OpenAI-dialect engine can serve it: no longer Anthropic-only
    assert out["response_format"]["json_schema"]["schema"] == schema
    assert out["response_format"]["json_schema"]["strict"] is True
    assert "effort" not in str(out.keys())


def test_output_config_format_wins_over_the_older_output_format() -> None:
    new, old = {"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "object"}
    body = messages(output_config={"format": {"type": "json_schema", "schema": new}},
                    output_format={"type": "json_schema", "schema": old})
    assert messages_to_chat_request(body)[0]["response_format"]["json_schema"]["schema"] == new


def test_effort_alone_is_dropped_like_thinking() -> None:
    out, native_only = messages_to_chat_request(messages(output_config={"effort": "low"}))
    assert native_only is None and "response_format" not in out


@pytest.mark.parametrize(("fields", "param"), [
    ({"output_config": "json"}, "output_config"),
    ({"output_config": {"format": "json"}}, "output_config.format"),
    ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format.type"),
    ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
    ({"output_config": {"format": {"type": "json_schema", "schema": []}}}, "output_config.format.schema"),
    ({"output_format": {"type": "text"}}, "output_format.type"),
    ({"output_format": {"type": "json_schema", "schema": None}}, "output_format.schema"),
])
def test_malformed_structured_output_is_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as info:
        check_request(messages(**fields))
    assert (info.value.status, info.value.param) == (400, param)


# ---------------------------------------------------------------- ids in the client's dialect


UPSTREAM_IDS = st.one_of(
    st.from_regex(r"(msg_|chatcmpl-)?[A-Za-z0-9_-]{1,30}", fullmatch=True),
    st.none(), st.just(""), st.integers())


@given(UPSTREAM_IDS, st.sampled_from([CHAT_ID_PREFIX, MESSAGE_ID_PREFIX]))
def test_every_translated_id_has_the_surface_prefix(upstream: Any, prefix: str) -> None:
    out = dialect_id(upstream, prefix)
    assert out.startswith(prefix) and len(out) > len(prefix)
    assert dialect_id(out, prefix) == out  # already in dialect: unchanged


@given(st.from_regex(r"[A-Za-z0-9]{1,30}", fullmatch=True))
def test_ids_round_trip_between_dialects(suffix: str) -> None:
    assert dialect_id(MESSAGE_ID_PREFIX + suffix, CHAT_ID_PREFIX) == CHAT_ID_PREFIX + suffix
    assert dialect_id(CHAT_ID_PREFIX + suffix, MESSAGE_ID_PREFIX) == MESSAGE_ID_PREFIX + suffix
    assert dialect_id(dialect_id(MESSAGE_ID_PREFIX + suffix, CHAT_ID_PREFIX), MESSAGE_ID_PREFIX) == (
        MESSAGE_ID_PREFIX + suffix)


def test_missing_ids_are_random_not_shared() -> None:
    assert dialect_id(None, MESSAGE_ID_PREFIX) != dialect_id(None, MESSAGE_ID_PREFIX)
