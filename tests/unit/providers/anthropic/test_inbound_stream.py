"""OpenAI chat chunks → Anthropic stream events (EventTranslator), from recorded byte streams.

Streams both dialects write alike are in the golden corpus; here are the
exact event sequence, what only OpenAI-dialect engines send (interleaved
parallel calls, missing indices, error chunks, reasoning), and malformed input.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from labgate.errors import UpstreamBadResponseError, UpstreamStatusError
from labgate.providers.anthropic.inbound_stream import PING, EventTranslator
from labgate.providers.sse import SSEBuffer, event_fields
from labgate.testing.anthropic_stream import accumulate

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "qwen"}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    data = {**HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def tool(index: int | None = None, **fields: Any) -> dict[str, Any]:
    call = {"index": index, **fields} if index is not None else dict(fields)
    return {"tool_calls": [call]}


def usage(prompt: int, completion: int) -> bytes:
    data = {**HEAD, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                             "total_tokens": prompt + completion}}
    return b"data: " + orjson.dumps(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def translate(*chunks: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every event produced, checking that each names its own type."""
    out = EventTranslator(where="provider 'p'")
    raw = b"".join(out.feed(c) for c in chunks)
    events = []
    for event in SSEBuffer().feed(raw):
        name, data = event_fields(event)
        parsed = orjson.loads(data)
        assert name == parsed["type"]
        events.append((name, parsed))
    return events


def final_message(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return accumulate(event for _, event in events)


def test_the_exact_event_sequence_for_text() -> None:
    events = translate(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
                       chunk({"content": " there"}), chunk({}, "stop"), usage(5, 2), DONE)
    assert events == [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "qwen", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hi"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": " there"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"input_tokens": 5, "output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_text_and_two_tool_calls_get_block_indices_0_1_2() -> None:
    events = translate(
        chunk({"role": "assistant", "content": None}), chunk({"content": "Checking."}),
        chunk(tool(0, id="call_a", type="function", function={"name": "a", "arguments": ""})),
        chunk(tool(0, function={"arguments": "{\"x\":"})), chunk(tool(0, function={"arguments": "1}"})),
        chunk(tool(1, id="call_b", type="function", function={"name": "b", "arguments": "{\"y\":2}"})),
        chunk({}, "tool_calls"), usage(9, 9), DONE)
    assert [(name, e.get("index")) for name, e in events] == [
        ("message_start", None), ("ping", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_stop", 2),
        ("message_delta", None), ("message_stop", None)]
    assert final_message(events)["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "a", "input": {"x": 1}},
        {"type": "tool_use", "id": "call_b", "name": "b", "input": {"y": 2}}]
    assert final_message(events)["stop_reason"] == "tool_use"


def test_interleaved_argument_fragments_keep_their_block_index() -> None:
    """Lossy corner: a late fragment for an ended block is sent after that block's stop."""
    events = translate(
        chunk({"role": "assistant"}),
        chunk(tool(0, id="call_a", function={"name": "a", "arguments": "{\"x\":"})),
        chunk(tool(1, id="call_b", function={"name": "b", "arguments": "{\"y\":"})),
        chunk(tool(0, function={"arguments": "1}"})), chunk(tool(1, function={"arguments": "2}"})),
        chunk({}, "tool_calls"), DONE)
    assert [(name, e.get("index")) for name, e in events][2:-2] == [
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 0),
        ("content_block_delta", 1), ("content_block_stop", 1)]
    assert [b["input"] for b in final_message(events)["content"]] == [{"x": 1}, {"y": 2}]


def test_tool_calls_without_an_index_are_told_apart_by_id() -> None:
    events = translate(
        chunk({"role": "assistant"}),
        chunk(tool(id="call_a", function={"name": "a", "arguments": "{\"x\":"})),
        chunk(tool(function={"arguments": "1}"})),
        chunk(tool(id="call_b", function={"name": "b", "arguments": "{}"})),
        chunk({}, "tool_calls"), DONE)
    assert final_message(events)["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "a", "input": {"x": 1}},
        {"type": "tool_use", "id": "call_b", "name": "b", "input": {}}]


def test_a_tool_call_without_an_id_gets_one() -> None:
    events = translate(chunk({"role": "assistant"}), chunk(tool(0, function={"name": "f", "arguments": "{}"})),
                       chunk({}, "tool_calls"), DONE)
    assert final_message(events)["content"] == [{"type": "tool_use", "id": "toolu_0", "name": "f", "input": {}}]


def test_reasoning_deltas_are_dropped_and_refusals_are_text() -> None:
    events = translate(chunk({"role": "assistant"}), chunk({"reasoning_content": "hmm"}),
                       chunk({"refusal": "No."}), chunk({}, "content_filter"), DONE)
    message = final_message(events)
    assert (message["content"], message["stop_reason"]) == ([{"type": "text", "text": "No."}], "refusal")


def test_vllm_names_the_stop_sequence() -> None:
    events = translate(chunk({"content": "1 2"}), chunk({}, "stop", ), DONE)
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    events = translate(chunk({"content": "1 2"}), b"data: " + orjson.dumps({**HEAD, "choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "3"}]}) + b"\n\n", DONE)
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "3"}


def test_usage_on_the_last_content_chunk_counts_too() -> None:
    events = translate(chunk({"content": "a"}), chunk({}, "length", usage={"prompt_tokens": 3, "completion_tokens": 1}),
                       DONE)
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                             "usage": {"input_tokens": 3, "output_tokens": 1}}


def test_no_usage_chunk_reports_zero() -> None:
    events = translate(chunk({"content": "a"}), chunk({}, "stop"), DONE)
    assert events[-2][1]["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_other_choices_are_ignored() -> None:
    other = b"data: " + orjson.dumps({**HEAD, "choices": [{"index": 1, "delta": {"content": "B"}}]}) + b"\n\n"
    events = translate(chunk({"content": "A"}), other, chunk({}, "stop"), DONE)
    assert final_message(events)["content"] == [{"type": "text", "text": "A"}]


def test_done_and_after() -> None:
    translator = EventTranslator()
    translator.feed(chunk({"content": "a"}))
    assert not translator.done
    translator.feed(DONE)
    assert translator.done
    assert translator.feed(chunk({"content": "late"})) == b""


def test_ping_is_an_anthropic_ping_event() -> None:
    assert PING == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_an_error_chunk_is_an_upstream_error() -> None:
    translator = EventTranslator(where="provider 'p'")
    translator.feed(chunk({"content": "a"}))
    with pytest.raises(UpstreamStatusError) as info:
        translator.feed(b'data: {"error": {"message": "model crashed", "code": 500}}\n\n')
    assert info.value.message == "provider 'p' sent an error in its stream: model crashed"


@pytest.mark.parametrize(("raw", "message"), [
    (b"data: {not json\n\n", "provider 'p' sent a stream event that is not JSON: b'{not json'"),
    (b"data: [1]\n\n", "provider 'p' sent a stream event that is not an object"),
    (DONE, "provider 'p' ended its stream before any chunk"),
])
def test_malformed_streams_are_bad_responses(raw: bytes, message: str) -> None:
    with pytest.raises(UpstreamBadResponseError) as info:
        EventTranslator(where="provider 'p'").feed(raw)
    assert info.value.message == message


def test_comments_and_blank_events_are_skipped() -> None:
    events = translate(b": keep-alive\n\n", chunk({"content": "a"}), b"\n\n", chunk({}, "stop"), DONE)
    assert final_message(events)["content"] == [{"type": "text", "text": "a"}]
