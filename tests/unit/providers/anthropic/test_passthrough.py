"""MessageTap: an Anthropic stream relayed byte for byte, with usage and stop reason read on the side."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.errors import UpstreamBadResponseError, UpstreamRateLimitError, UpstreamStatusError
from labgate.providers.anthropic.passthrough import MessageTap
from labgate.providers.base import StreamInfo, Usage


def sse(data: dict[str, Any], *, named: bool = True) -> bytes:
    head = f"event: {data['type']}\n".encode() if named else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


START = sse({"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [], "stop_reason": None,
    "stop_sequence": None, "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1}}})
RECORDED = b"".join([
    START,
    sse({"type": "ping"}),
    sse({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
    sse({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm ☀️"}}),
    sse({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}}),
    sse({"type": "content_block_stop", "index": 0}),
    sse({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "",
                                                                      "citations": None}}),
    sse({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Bonjour — 東京"}}),
    sse({"type": "content_block_stop", "index": 1}),
    sse({"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "###"},
         "usage": {"output_tokens": 42}}),
    sse({"type": "message_stop"}),
])


def tap() -> MessageTap:
    return MessageTap(StreamInfo(), where="provider 'a'")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(RECORDED)), max_size=15))
def test_any_split_passes_every_byte_through(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(RECORDED)]
    t = tap()
    out = b"".join(t.feed(RECORDED[a:b]) for a, b in itertools.pairwise(edges))
    assert out == RECORDED
    assert (t.started, t.done) == (True, True)
    assert (t.info.usage, t.info.finish_reason, t.info.chunks) == (Usage(25, 42, cached_tokens=5), "stop", 11)
    assert t.info.first_token is not None


def test_started_after_message_start_and_only_whole_events_pass() -> None:
    t = tap()
    assert t.feed(START[:-1]) == b""
    assert not t.started
    assert t.feed(START[-1:]) == START
    assert t.started


def test_events_without_an_event_line_are_read_from_their_data() -> None:
    t = tap()
    raw = sse({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}, named=False) + sse(
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}, named=False)
    assert t.feed(raw + sse({"type": "message_stop"}, named=False)) == raw + sse({"type": "message_stop"}, named=False)
    assert (t.done, t.info.usage, t.info.finish_reason) == (True, Usage(3, 4), "tool_calls")


def test_comments_are_not_relayed_and_nothing_after_message_stop() -> None:
    t = tap()
    assert t.feed(b": keep-alive\n\n" + START) == START
    t.feed(sse({"type": "message_stop"}))
    assert t.feed(sse({"type": "ping"})) == b""


@pytest.mark.parametrize(("kind", "expected", "anthropic_type"), [
    ("overloaded_error", UpstreamStatusError, "overloaded_error"),
    ("api_error", UpstreamStatusError, "api_error"),
    ("rate_limit_error", UpstreamRateLimitError, "rate_limit_error"),
])
def test_an_error_event_is_raised_not_relayed(kind: str, expected: type, anthropic_type: str) -> None:
    t = tap()
    t.feed(START)
    with pytest.raises(expected) as info:
        t.feed(sse({"type": "error", "error": {"type": kind, "message": "busy"}}))
    assert info.value.anthropic_type == anthropic_type
    assert info.value.message.startswith("provider 'a' (in its stream) answered ")


@pytest.mark.parametrize(("raw", "message"), [
    (sse({"type": "content_block_stop", "index": 0}), "provider 'a' sent 'content_block_stop' before 'message_start'"),
    (b"event: message_start\ndata: {nope\n\n", "provider 'a' sent a stream event that is not JSON: b'{nope'"),
    (b"event: message_start\ndata: [1]\n\n", "provider 'a' sent a stream event that is not an object"),
    (sse({"type": "message_start"}), "provider 'a' sent 'message_start' without a message"),
])
def test_malformed_streams_are_bad_responses(raw: bytes, message: str) -> None:
    with pytest.raises(UpstreamBadResponseError) as info:
        tap().feed(raw)
    assert info.value.message == message
