"""OpenAI chat ⇄ Anthropic Messages translation of whole requests and responses."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from labgate.errors import RequestError, UpstreamBadResponseError
from labgate.providers.anthropic.translate import (
    chat_request_to_messages,
    finish_reason,
    message_to_chat_completion,
    read_usage,
)
from labgate.providers.base import Usage


def translate(body: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    return chat_request_to_messages(body, model="claude-x", default_max_tokens=4096, stream=stream)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def refused(body: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as info:
        translate(body)
    return info.value


# ---------------------------------------------------------------- requests


def test_minimal_request_gets_the_default_max_tokens() -> None:
    body = {"model": "public-name", "messages": [{"role": "user", "content": "hi"}]}
    assert translate(body) == {"model": "claude-x", "max_tokens": 4096, "messages": [user("hi")]}


def test_system_and_developer_messages_anywhere_are_joined() -> None:
    body = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."},
                                          {"type": "text", "text": "No emoji."}]},
        {"role": "assistant", "content": "salut"},
    ]}
    assert translate(body) == {
        "model": "claude-x", "max_tokens": 4096,
        "system": "Be brief.\n\nUse French.\n\nNo emoji.",
        "messages": [user("hi"), {"role": "assistant", "content": [{"type": "text", "text": "salut"}]}],
    }


def test_consecutive_same_role_messages_are_merged() -> None:
    body = {"messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": ""},  # empty: dropped, never an empty block
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "five"},
    ]}
    assert translate(body)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
        user("five"),
    ]


def test_user_image_parts_become_base64_and_url_sources() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]}
    assert translate(body)["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]}]


def test_an_image_url_that_is_neither_http_nor_base64_is_refused() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]}]}
    error = refused(body)
    assert (error.param, error.status) == ("messages[0].content[0].image_url.url", 400)


def test_unsupported_content_part_is_refused_with_its_path() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "listen"}, {"type": "input_audio", "input_audio": {}}]}]}
    assert refused(body).param == "messages[0].content[1].type"


def test_tool_round_trip_messages() -> None:
    body = {"messages": [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "thanks"},
    ]}
    assert translate(body)["messages"] == [
        user("weather in Paris and Rome?"),
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
            {"type": "text", "text": "thanks"},
        ]},
    ]


def test_assistant_with_only_tool_calls_has_no_text_block() -> None:
    body = {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    ]}
    assert translate(body)["messages"][1] == {
        "role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_tool_call_arguments_that_are_not_a_json_object_are_refused(arguments: str) -> None:
    body = {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
    ]}
    error = refused(body)
    assert (error.param, type(error)) == ("messages[1].tool_calls[1].function.arguments", RequestError)


def test_tools_and_named_tool_choice_without_parallel_calls() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "Get weather",
                                              "parameters": schema, "strict": True}},
            {"type": "function", "function": {"name": "now"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "parallel_tool_calls": False,
    }
    out = translate(body)
    assert (out["tools"], out["tool_choice"]) == (
        [{"name": "weather", "description": "Get weather", "input_schema": schema},
         {"name": "now", "input_schema": {"type": "object", "properties": {}}}],
        {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
    )


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ("none", False, {"type": "none"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
])
def test_tool_choice_mapping(choice: str | None, parallel: bool | None, expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}],
                            "tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert translate(body)["tool_choice"] == expected


def test_no_tool_choice_without_tools_or_a_choice() -> None:
    out = translate({"messages": [{"role": "user", "content": "hi"}], "parallel_tool_calls": False})
    assert "tool_choice" not in out


def test_sampling_stop_user_and_stream() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 50, "max_tokens": 9,
            "temperature": 1.7, "top_p": 0.9, "stop": "END", "user": "u-42", "stream": True,
            "stream_options": {"include_usage": True}, "seed": 3, "presence_penalty": 0.5,
            "frequency_penalty": 0.1, "store": True, "metadata": {"x": "y"}, "n": 1}
    assert translate(body, stream=True) == {
        "model": "claude-x", "max_tokens": 50, "messages": [user("hi")],
        # 1.7 is clamped to Anthropic's maximum, not rescaled.
        "temperature": 1.0, "top_p": 0.9, "stop_sequences": ["END"],
        "metadata": {"user_id": "u-42"}, "stream": True,
    }


def test_stop_list_max_tokens_and_low_temperature_kept() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b"], "max_tokens": 7,
            "temperature": 0.2}
    out = translate(body)
    assert (out["stop_sequences"], out["max_tokens"], out["temperature"]) == (["a", "b"], 7, 0.2)


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"response_format": {"type": "json_object"}}, "response_format.type"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "system", "content": "only system"}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
])
def test_unsupported_parameters_are_refused_with_their_name(extra: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    error = refused(body)
    assert (type(error), error.param, error.status, error.should_retry) == (RequestError, param, 400, False)


def test_harmless_response_format_and_n_are_accepted() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "n": 1, "response_format": {"type": "text"},
            "logprobs": False, "modalities": ["text"]}
    assert translate(body) == {"model": "claude-x", "max_tokens": 4096, "messages": [user("hi")]}


def test_the_client_body_is_not_mutated() -> None:
    body = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                         {"role": "assistant", "tool_calls": [
                             {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
            "parallel_tool_calls": False}
    before = copy.deepcopy(body)
    translate(body)
    translate(body)
    assert body == before


# ---------------------------------------------------------------- responses


MESSAGE = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x-20250101",
    "content": [
        {"type": "text", "text": "Let me check "},
        {"type": "text", "text": "both."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris", "days": 2}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 20, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5,
              "output_tokens": 30},
}


def test_message_with_text_and_tools_becomes_a_chat_completion() -> None:
    assert message_to_chat_completion(MESSAGE, created=1700000000, where="provider 'a'") == {
        "id": "chatcmpl-01", "object": "chat.completion", "created": 1700000000, "model": "claude-x-20250101",
        "choices": [{
            "index": 0, "logprobs": None, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me check both.", "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"Paris","days":2}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
            ]},
        }],
        "usage": {"prompt_tokens": 125, "completion_tokens": 30, "total_tokens": 155,
                  "prompt_tokens_details": {"cached_tokens": 100}},
    }


def test_message_with_only_a_tool_call_has_null_content() -> None:
    message = {**MESSAGE, "content": [MESSAGE["content"][3]], "usage": {"input_tokens": 3, "output_tokens": 4}}
    out = message_to_chat_completion(message, created=1, where="p")
    assert (out["choices"][0]["message"], out["usage"]) == (
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
        {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    )


def test_a_body_that_is_not_a_message_is_a_bad_response() -> None:
    with pytest.raises(UpstreamBadResponseError) as info:
        message_to_chat_completion({"type": "message"}, created=1, where="provider 'a'")
    assert (info.value.message, info.value.retryable) == ("provider 'a' sent a message without a 'content' list", True)


@pytest.mark.parametrize(("stop_reason", "expected"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length"),
    (None, "stop"), ("something_new", "stop"),
])
def test_finish_reasons(stop_reason: str | None, expected: str) -> None:
    assert finish_reason(stop_reason) == expected


def test_usage_counts_cache_tokens_as_prompt() -> None:
    assert read_usage(MESSAGE["usage"]) == Usage(prompt_tokens=125, completion_tokens=30,
                                              cached_tokens=100, cache_write_tokens=5)
    assert read_usage(None) == Usage()

