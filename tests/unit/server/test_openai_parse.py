"""Request checks on the OpenAI surface: every malformed body is a 400 that names the parameter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from labgate.errors import InvalidJSONError, RequestError
from labgate.server.openai import parse_chat, parse_completion, parse_embedding

Parse = Callable[[bytes], dict[str, Any]]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "Once upon"}
EMBEDDING = {"model": "e", "input": "hello"}


def refused(parse: Parse, body: bytes | dict[str, Any] | list[Any]) -> tuple[type[Exception], int, str | None, str]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(RequestError) as info:
        parse(raw)
    return type(info.value), info.value.status, info.value.param, info.value.message


# ---------------------------------------------------------------- accepted bodies


def test_valid_bodies_come_back_parsed() -> None:
    chat = {**CHAT, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "developer", "content": "x"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "tool_calls": []}, {"role": "tool", "content": "42"},
        {"role": "function", "content": "42"}],
        "stream": True, "max_tokens": 1, "max_completion_tokens": 8, "n": 2, "temperature": 2, "top_p": 0,
        "presence_penalty": -1.5, "frequency_penalty": 1, "seed": -3, "stop": ["\n"], "tools": [{}],
        "tool_choice": "auto", "response_format": {"type": "json_object"}, "stream_options": {}, "user": "u",
        "unknown_extra": {"passed": "through"}}
    assert parse_chat(orjson.dumps(chat)) == chat
    assert parse_completion(orjson.dumps({**COMPLETION, "prompt": ["a", "b"]})) == {**COMPLETION, "prompt": ["a", "b"]}
    embedding = {**EMBEDDING, "input": [[1, 2], [3]], "dimensions": 256, "encoding_format": "base64"}
    assert parse_embedding(orjson.dumps(embedding)) == embedding


def test_null_optional_parameters_are_accepted_as_openai_does() -> None:
    body = {**CHAT, **dict.fromkeys(["stream", "max_tokens", "n", "temperature", "top_p", "seed", "stop",
                                     "tools", "tool_choice", "response_format", "stream_options", "user"])}
    assert parse_chat(orjson.dumps(body)) == body
    assert parse_embedding(orjson.dumps({**EMBEDDING, "stream": None, "dimensions": None})) == {
        **EMBEDDING, "stream": None, "dimensions": None}


# ---------------------------------------------------------------- every endpoint


@pytest.mark.parametrize("parse", [parse_chat, parse_completion, parse_embedding])
@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "The request body is not valid JSON: unexpected character, expected a string key: "
                   "line 1 column 2 (char 1)"),
    (b"", "The request body is not valid JSON: Input is a zero-length, empty document: line 1 column 1 (char 0)"),
    (b"[1, 2]", "The request body must be a JSON object."),
    (b'"model"', "The request body must be a JSON object."),
], ids=["broken", "empty", "array", "string"])
def test_body_must_be_a_json_object(parse: Parse, body: bytes, message: str) -> None:
    assert refused(parse, body) == (InvalidJSONError, 400, None, message)


@pytest.mark.parametrize("parse", [parse_chat, parse_completion, parse_embedding])
@pytest.mark.parametrize("model", [{}, {"model": None}, {"model": ""}, {"model": 7}, {"model": ["m"]}],
                         ids=["missing", "null", "empty", "number", "list"])
def test_model_must_be_a_non_empty_string(parse: Parse, model: dict[str, Any]) -> None:
    body = {**{"messages": CHAT["messages"], "prompt": "x", "input": "x"}, **model}
    assert refused(parse, body) == (RequestError, 400, "model",
                                    "'model' is required and must be a non-empty string.")


@pytest.mark.parametrize(("param", "value", "message"), [
    ("stream", "yes", "'stream' must be a boolean; got \"yes\"."),
    ("stream", 1, "'stream' must be a boolean; got 1."),
    ("max_tokens", 0, "'max_tokens' must be an integer ≥ 1; got 0."),
    ("max_tokens", 1.5, "'max_tokens' must be an integer ≥ 1; got 1.5."),
    ("max_tokens", True, "'max_tokens' must be an integer ≥ 1; got true."),
    ("max_completion_tokens", "10", "'max_completion_tokens' must be an integer ≥ 1; got \"10\"."),
    ("n", 0, "'n' must be an integer ≥ 1; got 0."),
    ("temperature", 2.5, "'temperature' must be a number between 0 and 2; got 2.5."),
    ("temperature", -0.1, "'temperature' must be a number between 0 and 2; got -0.1."),
    ("temperature", True, "'temperature' must be a number between 0 and 2; got true."),
    ("top_p", 1.01, "'top_p' must be a number between 0 and 1; got 1.01."),
    ("presence_penalty", "high", "'presence_penalty' must be a number; got \"high\"."),
    ("frequency_penalty", [1], "'frequency_penalty' must be a number; got [1]."),
    ("seed", 1.0, "'seed' must be an integer; got 1.0."),
    ("stop", ["a", 1], "'stop' must be a string or array of strings; got [\"a\",1]."),
    ("stop", 5, "'stop' must be a string or array of strings; got 5."),
    ("tools", {"type": "function"}, "'tools' must be an array of objects; got {\"type\":\"function\"}."),
    ("tools", ["f"], "'tools' must be an array of objects; got [\"f\"]."),
    ("tool_choice", 1, "'tool_choice' must be a string or an object; got 1."),
    ("response_format", "json", "'response_format' must be an object with a 'type'; got \"json\"."),
    ("response_format", {}, "'response_format' must be an object with a 'type'; got {}."),
    ("stream_options", "usage", "'stream_options' must be an object; got \"usage\"."),
    ("user", 42, "'user' must be a string; got 42."),
    ("dimensions", 0, "'dimensions' must be an integer ≥ 1; got 0."),
    ("encoding_format", "int8", "'encoding_format' must be 'float' or 'base64'; got \"int8\"."),
])
def test_each_typed_parameter_is_checked(param: str, value: Any, message: str) -> None:
    assert refused(parse_chat, {**CHAT, param: value}) == (RequestError, 400, param, message)


def test_a_long_bad_value_is_shortened_in_the_message() -> None:
    assert refused(parse_chat, {**CHAT, "user": ["x" * 100]}) == (
        RequestError, 400, "user", "'user' must be a string; got [\"" + "x" * 58 + ".")


# ---------------------------------------------------------------- chat


@pytest.mark.parametrize("messages", [{}, {"messages": None}, {"messages": []}, {"messages": "hi"},
                                      {"messages": {"role": "user", "content": "hi"}}],
                         ids=["missing", "null", "empty", "string", "object"])
def test_messages_must_be_a_non_empty_array(messages: dict[str, Any]) -> None:
    assert refused(parse_chat, {"model": "m", **messages}) == (
        RequestError, 400, "messages", "'messages' is required and must be a non-empty array.")


ROLES = "assistant, developer, function, system, tool, user"


@pytest.mark.parametrize(("message", "param", "text"), [
    ("hi", "messages[1]", "'messages[1]' must be an object."),
    ({"content": "hi"}, "messages[1].role", f"'messages[1].role' must be one of {ROLES}."),
    ({"role": "robot", "content": "hi"}, "messages[1].role", f"'messages[1].role' must be one of {ROLES}."),
    ({"role": "User", "content": "hi"}, "messages[1].role", f"'messages[1].role' must be one of {ROLES}."),
    ({"role": "user", "content": 5}, "messages[1].content",
     "'messages[1].content' must be a string or an array of parts."),
    ({"role": "user", "content": {"type": "text", "text": "hi"}}, "messages[1].content",
     "'messages[1].content' must be a string or an array of parts."),
])
def test_each_message_is_checked(message: Any, param: str, text: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "ok"}, message]}
    assert refused(parse_chat, body) == (RequestError, 400, param, text)


# ---------------------------------------------------------------- completions and embeddings


@pytest.mark.parametrize("prompt", [{}, {"prompt": None}, {"prompt": []}, {"prompt": 3}, {"prompt": {"a": 1}}],
                         ids=["missing", "null", "empty", "number", "object"])
def test_completion_prompt_is_required(prompt: dict[str, Any]) -> None:
    assert refused(parse_completion, {"model": "m", **prompt}) == (
        RequestError, 400, "prompt", "'prompt' is required: a string or a non-empty array.")


@pytest.mark.parametrize("given", [{}, {"input": None}, {"input": []}, {"input": 3}, {"input": {"a": 1}}],
                         ids=["missing", "null", "empty", "number", "object"])
def test_embedding_input_is_required(given: dict[str, Any]) -> None:
    assert refused(parse_embedding, {"model": "e", **given}) == (
        RequestError, 400, "input", "'input' is required: a string or a non-empty array.")


def test_embeddings_cannot_be_streamed() -> None:
    assert refused(parse_embedding, {**EMBEDDING, "stream": True}) == (
        RequestError, 400, "stream", "Embeddings cannot be streamed.")
    assert parse_embedding(orjson.dumps({**EMBEDDING, "stream": False})) == {**EMBEDDING, "stream": False}


def test_request_errors_tell_sdks_not_to_retry() -> None:
    with pytest.raises(RequestError) as info:
        parse_chat(b"{}")
    assert (info.value.openai_type, info.value.code, info.value.should_retry) == (
        "invalid_request_error", "invalid_request", False)
