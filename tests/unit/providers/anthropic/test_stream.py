"""Anthropic stream events → OpenAI chat.completion.chunk SSE, from recorded byte streams."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from labgate.errors import (
    LabgateError,
    UpstreamBadResponseError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamStatusError,
)
from labgate.providers.anthropic.stream import StreamTranslator
from labgate.providers.base import StreamInfo, Usage


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


def block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def json_delta(index: int, fragment: str) -> bytes:
    return block_delta(index, {"type": "input_json_delta", "partial_json": fragment})


MESSAGE_START = sse("message_start", {"type": "message_start", "message": {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10,
              "output_tokens": 1}}})
MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})

# What Anthropic sends for a text block followed by two tool_use blocks; the two tool
# blocks' deltas interleave, and the text holds multi-byte characters to split inside.
RECORDED = b"".join([
    MESSAGE_START,
    sse("ping", {"type": "ping"}),
    sse("content_block_start", {"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
    block_delta(0, {"type": "text_delta", "text": "Checking "}),
    block_delta(0, {"type": "text_delta", "text": "both — ☀️."}),
    sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_A", "name": "weather", "input": {}}}),
    json_delta(1, ""),
    sse("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_B", "name": "time", "input": {}}}),
    json_delta(1, '{"city": "Par'),
    json_delta(2, '{"tz":'),
    json_delta(1, 'is"}'),
    json_delta(2, ' "CET"}'),
    sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
    sse("content_block_stop", {"type": "content_block_stop", "index": 2}),
    sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                          "usage": {"output_tokens": 42}}),
    MESSAGE_STOP,
])


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-01", "object": "chat.completion.chunk", "created": 1700000000, "model": "claude-x",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def tool_delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields}]}


EXPECTED = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Checking "}),
    chunk({"content": "both — ☀️."}),
    chunk(tool_delta(0, id="toolu_A", type="function", function={"name": "weather", "arguments": ""})),
    chunk(tool_delta(1, id="toolu_B", type="function", function={"name": "time", "arguments": ""})),
    chunk(tool_delta(0, function={"arguments": '{"city": "Par'})),
    chunk(tool_delta(1, function={"arguments": '{"tz":'})),
    chunk(tool_delta(0, function={"arguments": 'is"}'})),
    chunk(tool_delta(1, function={"arguments": ' "CET"}'})),
    chunk({}, "tool_calls"),
]
USAGE_CHUNK = {"id": "chatcmpl-01", "object": "chat.completion.chunk", "created": 1700000000, "model": "claude-x",
               "choices": [], "usage": {"prompt_tokens": 35, "completion_tokens": 42, "total_tokens": 77,
                                        "prompt_tokens_details": {"cached_tokens": 10}}}


def translator(*, include_usage: bool = True) -> StreamTranslator:
    return StreamTranslator(StreamInfo(), include_usage=include_usage, created=1700000000, where="provider 'a'")


def run(pieces: list[bytes], *, include_usage: bool = True) -> tuple[bytes, StreamTranslator]:
    t = translator(include_usage=include_usage)
    return b"".join(t.feed(p) for p in pieces), t


def events(out: bytes) -> list[Any]:
    """The OpenAI SSE output as parsed JSON, with [DONE] kept as the string."""
    assert out.endswith(b"\n\n")
    parsed = []
    for event in out[:-2].split(b"\n\n"):
        assert event.startswith(b"data: ")
        data = event[len(b"data: "):]
        parsed.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return parsed


def test_recorded_stream_in_one_piece() -> None:
    out, t = run([RECORDED])
    assert events(out) == [*EXPECTED, USAGE_CHUNK, "[DONE]"]
    assert (t.info, t.started, t.done) == (
        StreamInfo(usage=Usage(prompt_tokens=35, completion_tokens=42, cached_tokens=10), finish_reason="tool_calls",
                   chunks=12,
                   first_token=t.info.first_token),
        True, True)
    assert t.info.first_token is not None  # set at the first content_block_delta


def test_every_two_way_split_gives_the_same_bytes() -> None:
    whole, _ = run([RECORDED])
    for cut in range(1, len(RECORDED)):
        out, _ = run([RECORDED[:cut], RECORDED[cut:]])
        assert out == whole, cut


def test_byte_by_byte() -> None:
    whole, _ = run([RECORDED])
    out, _ = run([RECORDED[i:i + 1] for i in range(len(RECORDED))])
    assert out == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(RECORDED)), max_size=12))
def test_any_split_gives_the_same_bytes(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(RECORDED)]
    out, _ = run([RECORDED[a:b] for a, b in pairwise(bounds)])
    assert events(out) == [*EXPECTED, USAGE_CHUNK, "[DONE]"]


def test_chunks_are_valid_for_the_openai_sdk_and_reassemble_the_tool_calls() -> None:
    out, _ = run([RECORDED])
    arguments: dict[int, str] = {}
    for data in events(out)[:-1]:
        parsed = ChatCompletionChunk.model_validate(data)
        for choice in parsed.choices:
            for call in choice.delta.tool_calls or ():
                arguments[call.index] = arguments.get(call.index, "") + (call.function.arguments or "")
    assert {i: orjson.loads(a) for i, a in arguments.items()} == {0: {"city": "Paris"}, 1: {"tz": "CET"}}


def test_no_usage_chunk_unless_the_client_asked() -> None:
    out, t = run([RECORDED], include_usage=False)
    assert events(out) == [*EXPECTED, "[DONE]"]
    assert (t.info.usage, t.info.chunks) == (Usage(prompt_tokens=35, completion_tokens=42, cached_tokens=10), 11)


def test_started_after_message_start_and_nothing_before() -> None:
    t = translator()
    assert (t.feed(b"event: ping\ndata: {\"type\": \"ping\"}\n\n"), t.started) == (b"", False)
    assert (events(t.feed(MESSAGE_START)), t.started, t.done) == ([EXPECTED[0]], True, False)


def test_events_after_message_stop_are_ignored() -> None:
    out, t = run([RECORDED + block_delta(0, {"type": "text_delta", "text": "late"})])
    assert events(out)[-1] == "[DONE]"
    assert t.info.chunks == 12


def test_text_only_answer_stopped_by_max_tokens_with_cumulative_usage() -> None:
    stream = b"".join([
        MESSAGE_START,
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "thinking", "thinking": ""}}),
        block_delta(0, {"type": "thinking_delta", "thinking": "hmm"}),
        sse("content_block_start", {"type": "content_block_start", "index": 1,
                                    "content_block": {"type": "text", "text": "Hel"}}),
        block_delta(1, {"type": "text_delta", "text": "lo"}),
        sse("something_new", {"type": "something_new"}),
        sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                              "usage": {"input_tokens": 26, "output_tokens": 9, "cache_read_input_tokens": None}}),
        MESSAGE_STOP,
    ])
    out, t = run([stream], include_usage=False)
    assert events(out) == [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                           chunk({"content": "lo"}), chunk({}, "length"), "[DONE]"]
    assert (t.info.usage, t.info.finish_reason) == (
        Usage(prompt_tokens=36, completion_tokens=9, cached_tokens=10), "length")


def error_event(kind: str, message: str) -> bytes:
    return sse("error", {"type": "error", "error": {"type": kind, "message": message}})


@pytest.mark.parametrize(("kind", "expected"), [
    ("overloaded_error", (UpstreamStatusError, 502, True)),
    ("api_error", (UpstreamStatusError, 502, True)),
    ("rate_limit_error", (UpstreamRateLimitError, 429, True)),
    ("invalid_request_error", (UpstreamRejectedError, 400, False)),
    ("brand_new_error", (UpstreamStatusError, 502, True)),
])
def test_error_event_mid_stream_raises_the_matching_error(kind: str, expected: tuple[type, int, bool]) -> None:
    t = translator()
    t.feed(MESSAGE_START)
    with pytest.raises(LabgateError) as info:
        t.feed(error_event(kind, "Overloaded"))
    error = info.value
    assert (type(error), error.status, error.retryable) == expected
    assert error.message.endswith(": Overloaded")


def test_overloaded_error_keeps_the_529_status() -> None:
    t = translator()
    with pytest.raises(UpstreamStatusError) as info:
        t.feed(error_event("overloaded_error", "Overloaded"))
    assert (info.value.upstream_status, info.value.message) == (
        529, "provider 'a' (in its stream) answered 529: Overloaded")


@pytest.mark.parametrize(("raw", "message"), [
    (b"event: message_start\ndata: {not json\n\n",
     "provider 'a' sent a stream event that is not JSON: b'{not json'"),
    (b"data: [1]\n\n", "provider 'a' sent a stream event that is not an object"),
    (block_delta(0, {"type": "text_delta", "text": "x"}),
     "provider 'a' sent 'content_block_delta' before 'message_start'"),
    (b"event: message_start\ndata: {\"type\": \"message_start\"}\n\n",
     "provider 'a' sent 'message_start' without a message"),
])
def test_malformed_streams_are_bad_responses(raw: bytes, message: str) -> None:
    with pytest.raises(UpstreamBadResponseError) as info:
        translator().feed(raw)
    assert info.value.message == message
