"""Anthropic Messages → OpenAI chat for Anthropic clients: what round trips cannot show.

The lossless cases are the golden corpus (``test_roundtrip.py``). Here: what
is dropped, moved or refused (each a lossy corner named in
``docs/anthropic.md``), the stop-reason and usage mapping, and the token
estimate of ``count_tokens``.
"""

from __future__ import annotations

from typing import Any

import pytest

from labgate.errors import UpstreamBadResponseError
from labgate.providers.anthropic.inbound import (
    IMAGE_TOKENS,
    MESSAGE_TOKENS,
    STOP_REASONS,
    anthropic_usage,
    chat_completion_to_message,
    estimate_input_tokens,
    messages_to_chat_request,
    stop_reason,
)
from labgate.providers.anthropic.translate import FINISH_REASONS, chat_request_to_messages

PNG = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
PNG_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
USE = {"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}
CALL = {"id": "toolu_1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}


def request(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": list(messages), **fields}


def translated(body: dict[str, Any]) -> dict[str, Any]:
    out, native_only = messages_to_chat_request(body)
    assert native_only is None
    return out


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


# ---------------------------------------------------------------- lossy corners, one test each


def test_thinking_blocks_and_the_thinking_setting_are_dropped() -> None:
    body = request(user("Why?"), assistant([
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Because."}]), user("OK"),
        thinking={"type": "enabled", "budget_tokens": 2000})
    assert translated(body) == {"model": "m", "max_completion_tokens": 100, "messages": [
        {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."},
        {"role": "user", "content": "OK"}]}


def test_an_assistant_turn_of_only_thinking_disappears() -> None:
    body = request(user("a"), assistant([{"type": "thinking", "thinking": "hm", "signature": "s"}]), user("b"))
    assert translated(body)["messages"] == [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]


def test_cache_control_is_dropped_everywhere() -> None:
    cache = {"type": "ephemeral"}
    body = request(user([{"type": "text", "text": "Long document.", "cache_control": cache}]),
                   system=[{"type": "text", "text": "Rules.", "cache_control": cache}],
                   tools=[{"name": "t", "input_schema": {"type": "object"}, "cache_control": cache}])
    assert translated(body) == {"model": "m", "max_completion_tokens": 100, "messages": [
        {"role": "system", "content": "Rules."}, {"role": "user", "content": "Long document."}],
        "tools": [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}]}


def test_images_in_a_tool_result_move_to_a_user_message_after_the_tool_messages() -> None:
    body = request(user("Screenshot?"), assistant([USE]), user([
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "here"}, PNG]},
        {"type": "text", "text": "What do you see?"}]))
    assert translated(body)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "here"},
        {"role": "user", "content": [PNG_PART, {"type": "text", "text": "What do you see?"}]}]


def test_a_tool_result_that_is_only_an_image_leaves_an_empty_tool_message() -> None:
    body = request(user("Shot?"), assistant([USE]), user([
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [PNG]}]))
    assert translated(body)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": ""}, {"role": "user", "content": [PNG_PART]}]


def test_a_tool_result_whose_text_starts_with_the_error_mark_comes_back_as_an_error() -> None:
    """The mark is how is_error travels; an ordinary result that begins with it is read as one."""
    body = request(user("Run."), assistant([USE]), user([
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "[tool error] is what my tool prints"}]))
    back = chat_request_to_messages(translated(body), model="m", default_max_tokens=100, stream=False)
    assert back["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": "is what my tool prints"}]


def test_text_before_tool_results_in_a_user_turn_moves_after_them() -> None:
    body = request(user("Go."), assistant([USE]), user([
        {"type": "text", "text": "Here you are:"}, {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]))
    assert translated(body)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}, {"role": "user", "content": "Here you are:"}]


def test_text_between_tool_uses_in_an_assistant_turn_comes_first() -> None:
    body = request(user("Go."), assistant([
        {"type": "text", "text": "One."}, USE, {"type": "text", "text": "Two."},
        {**USE, "id": "toolu_2"}]), user([{"type": "tool_result", "tool_use_id": "toolu_1"},
                                          {"type": "tool_result", "tool_use_id": "toolu_2"}]))
    assert translated(body)["messages"][1] == {
        "role": "assistant", "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
        "tool_calls": [CALL, {**CALL, "id": "toolu_2"}]}


def test_a_final_assistant_turn_is_sent_as_a_message_not_a_prefill() -> None:
    """Anthropic continues a trailing assistant turn; OpenAI-dialect engines may start a new one."""
    body = request(user("Write JSON."), assistant("{\"name\":"))
    assert translated(body)["messages"] == [{"role": "user", "content": "Write JSON."},
                                            {"role": "assistant", "content": "{\"name\":"}]


@pytest.mark.parametrize(("fields", "messages", "reason"), [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}, [],
     "the 'web_search_20250305' tool (tools.0)"),
    ({}, [user([{"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}])],
     "a 'document' block (messages.0.content.0)"),
    ({"mcp_servers": [{"type": "url", "url": "https://mcp.example.com", "name": "x"}]}, [], "'mcp_servers'"),
    ({}, [user("q"), assistant([{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                                 "input": {"query": "x"}}])], "a 'server_tool_use' block (messages.1.content.0)"),
    ({}, [user("q"), assistant([USE]), user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
        {"type": "search_result", "source": "s", "title": "t", "content": []}]}])],
     "a 'search_result' block (messages.2.content.0.content.0)"),
])
def test_what_only_anthropic_can_serve_is_named(fields: dict[str, Any], messages: list[dict[str, Any]],
                                                reason: str) -> None:
    body = request(*(messages or [user("hi")]), **fields)
    assert messages_to_chat_request(body)[1] == reason


def test_every_native_only_reason_is_listed() -> None:
    body = request(user([{"type": "document", "source": {"type": "text", "data": "x", "media_type": "text/plain"}}]),
                   container="c_1", tools=[{"type": "bash_20250124", "name": "bash"}])
    assert messages_to_chat_request(body)[1] == (
        "'container', a 'document' block (messages.0.content.0), the 'bash_20250124' tool (tools.0)")


def test_unknown_bookkeeping_keys_are_dropped() -> None:
    body = request(user("hi"), service_tier="auto", context_management={"edits": []},
                   metadata={"user_id": "u1"})
    assert translated(body) == {"model": "m", "max_completion_tokens": 100,
                                "messages": [{"role": "user", "content": "hi"}], "user": "u1"}


def test_tool_choice_without_tools_is_dropped() -> None:
    assert "tool_choice" not in translated(request(user("hi"), tool_choice={"type": "any"}))


# ---------------------------------------------------------------- responses


def test_stop_reasons_are_finish_reasons_read_backwards() -> None:
    assert dict(STOP_REASONS) == {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                                  "content_filter": "refusal", "function_call": "tool_use"}
    assert {STOP_REASONS[FINISH_REASONS[s]] for s in STOP_REASONS.values()} == set(STOP_REASONS.values())


@pytest.mark.parametrize(("choice", "expected"), [
    ({"finish_reason": "stop"}, ("end_turn", None)),
    ({"finish_reason": "length"}, ("max_tokens", None)),
    ({"finish_reason": "tool_calls"}, ("tool_use", None)),
    ({"finish_reason": "function_call"}, ("tool_use", None)),
    ({"finish_reason": "content_filter"}, ("refusal", None)),
    ({"finish_reason": "something_new"}, ("end_turn", None)),
    ({"finish_reason": None}, ("end_turn", None)),
    ({}, ("end_turn", None)),
    ({"finish_reason": "stop", "stop_reason": "###"}, ("stop_sequence", "###")),  # vLLM says which one
    ({"finish_reason": "stop", "stop_reason": 128009}, ("end_turn", None)),  # vLLM: a stop token id
])
def test_stop_reason(choice: dict[str, Any], expected: tuple[str, str | None]) -> None:
    assert stop_reason(choice) == expected


def test_a_stop_sequence_hit_is_end_turn_when_the_upstream_does_not_say_which() -> None:
    """Lossy corner: OpenAI reports ``stop`` for both; only vLLM names the sequence."""
    completion = {"id": "c", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "1 2 3"}, "finish_reason": "stop"}]}
    message = chat_completion_to_message(completion, where="x")
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, {"input_tokens": 10, "output_tokens": 5}),
    ({"prompt_tokens": 100, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 60}},
     {"input_tokens": 40, "output_tokens": 1, "cache_read_input_tokens": 60}),
    ({"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": None}},
     {"input_tokens": 7, "output_tokens": 2}),
    (None, {"input_tokens": 0, "output_tokens": 0}),
])
def test_usage(usage: Any, expected: dict[str, int]) -> None:
    assert anthropic_usage(usage) == expected


def test_a_refusal_field_becomes_the_text() -> None:
    completion = {"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "content_filter", "message": {
        "role": "assistant", "content": None, "refusal": "I can't help with that."}}]}
    assert chat_completion_to_message(completion, where="x")["content"] == [
        {"type": "text", "text": "I can't help with that."}]


def test_reasoning_content_is_dropped() -> None:
    completion = {"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "42", "reasoning_content": "Let me think step by step."}}]}
    assert chat_completion_to_message(completion, where="x")["content"] == [{"type": "text", "text": "42"}]


def test_text_parts_in_a_reply_are_joined() -> None:
    completion = {"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]}
    assert chat_completion_to_message(completion, where="x")["content"] == [{"type": "text", "text": "ab"}]


@pytest.mark.parametrize("arguments", ["{\"city\": \"Par", "[1, 2]", "\"text\"", "null"])
def test_tool_arguments_that_are_not_a_json_object_are_a_bad_response(arguments: str) -> None:
    completion = {"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": arguments}}]}}]}
    with pytest.raises(UpstreamBadResponseError) as info:
        chat_completion_to_message(completion, where="provider 'p'")
    assert info.value.message == (
        f"provider 'p' tool call 0: the model's tool arguments are not a JSON object: {arguments!r}")


@pytest.mark.parametrize("completion", [{}, {"choices": []}, {"choices": [{"index": 0}]}, []])
def test_a_completion_without_a_message_is_a_bad_response(completion: Any) -> None:
    with pytest.raises(UpstreamBadResponseError, match="provider 'p' sent a chat completion without a message"):
        chat_completion_to_message(completion, where="provider 'p'")


# ---------------------------------------------------------------- the token estimate


def test_estimate_counts_utf8_bytes_over_four_plus_images_and_messages() -> None:
    tool = {"name": "t", "input_schema": {"type": "object"}}
    body = request(user([{"type": "text", "text": "x" * 40}, PNG]),
                   assistant([{"type": "text", "text": "日本"}, {"type": "tool_use", "id": "i", "name": "ab",
                                                                 "input": {"k": 1}}]),
                   user([{"type": "tool_result", "tool_use_id": "i",
                          "content": [{"type": "text", "text": "yy"}, PNG]}]),
                   system="s" * 10, tools=[{**tool, "cache_control": {"type": "ephemeral"}}])
    size = 10 + 40 + 6 + (2 + len('{"k":1}')) + 2 + len('{"name":"t","input_schema":{"type":"object"}}')
    assert estimate_input_tokens(body) == -(-size // 4) + 2 * IMAGE_TOKENS + 3 * MESSAGE_TOKENS


def test_estimate_of_a_short_prompt() -> None:
    body = request(user("Hello, Claude"), system=[{"type": "text", "text": "Be brief."}])
    assert estimate_input_tokens(body) == -(-(13 + 9) // 4) + MESSAGE_TOKENS
