"""Stream rescue's pure parts: the partial answer read back from relayed events, and what may be rescued."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from labgate.errors import InternalError, UpstreamConnectionError
from labgate.record import RequestRecord
from labgate.routing.rescue import Rescue, anthropic_partial, partial_text, trailer


def event(delta: dict[str, object], index: int = 0) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": index, "delta": delta}]}) + b"\n\n"


def test_the_partial_answer_is_the_text_of_the_events_in_order() -> None:
    events = [event({"role": "assistant", "content": ""}), event({"content": "The"}), event({"content": " fox"}),
              b": a comment\n\n", b"data: [DONE]\n\n"]
    assert partial_text(events) == "The fox"


@given(st.lists(st.text(max_size=20), max_size=20))
def test_any_text_split_into_events_reads_back_whole(parts: list[str]) -> None:
    assert partial_text([event({"content": p}) for p in parts]) == "".join(parts)


def test_tool_calls_another_choice_or_an_unreadable_event_cannot_be_continued() -> None:
    assert [partial_text(events) for events in (
        [event({"content": "x"}), event({"tool_calls": [{"index": 0, "function": {"name": "f"}}]})],
        [event({"content": "x"}), event({"content": "y"}, index=1)],
        [event({"content": "x"}), b"data: {not json\n\n"],
    )] == [None, None, None]


def test_only_openai_chat_streams_broken_by_an_upstream_are_rescued_once() -> None:
    rescue = Rescue()

    def record(endpoint: str = "chat", rescues: int = 0, **payload: object) -> RequestRecord:
        r = RequestRecord("req", endpoint)
        r.payload, r.rescues = {"model": "m", "messages": [], **payload}, rescues
        return r

    cut = UpstreamConnectionError("cut")
    assert [rescue.can_rescue(r, e) for r, e in (
        (record(), cut), (record(n=1), cut), (record(), InternalError()), (record("messages"), cut),
        (record("completions"), cut), (record(rescues=1), cut), (record(n=2), cut),
    )] == [True, True, False, False, False, False, False]


def test_the_trailer_is_an_sse_comment_naming_both_deployments() -> None:
    r = RequestRecord("req", "chat")
    r.deployment, r.attempts = "b/m", 2
    assert trailer(r, "a/m") == (
        b": labgate rescued this stream: a/m failed mid-answer, b/m continued it (attempts=2)\n\n")


def anthropic_event(data: dict[str, object]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def test_anthropic_events_give_their_text_the_blocks_started_and_the_open_one() -> None:
    start = anthropic_event({"type": "message_start", "message": {}})
    text_block = anthropic_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}})
    delta = anthropic_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})
    stop = anthropic_event({"type": "content_block_stop", "index": 0})
    assert anthropic_partial([start + text_block, delta, delta]) == ("HiHi", 1, 0)
    assert anthropic_partial([start, text_block, delta, stop]) == ("Hi", 1, None)
    tool = anthropic_event({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use"}})
    thinking = anthropic_event({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}})
    json_delta = anthropic_event({"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "input_json_delta", "partial_json": "{"}})
    assert [anthropic_partial(events) for events in (
        [start, text_block, delta, stop, tool], [start, thinking], [start, text_block, json_delta],
        [start, b"data: {nope\n\n"], [start, anthropic_event({"type": "message_stop"})],
    )] == [None, None, None, None, None]


def test_events_read_back_however_the_reads_grouped_their_lines() -> None:
    two_in_one = event({"content": "a"}) + b": keepalive\n\n" + event({"content": "b"})
    no_index = b"data: " + orjson.dumps({"choices": [{"delta": {"content": "c"}}]}) + b"\n\n"
    assert partial_text([b": keepalive\n" + event({"content": "x"}), two_in_one, no_index]) == "xabc"


def test_a_legacy_function_call_cannot_be_continued() -> None:
    assert partial_text([event({"content": "x"}), event({"function_call": {"name": "f"}})]) is None


def test_anthropic_pings_are_skipped_and_anything_but_a_text_delta_stops_the_reading() -> None:
    start = anthropic_event({"type": "message_start", "message": {}})
    text_block = anthropic_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}})
    ping = anthropic_event({"type": "ping"})

    def delta(value: object) -> bytes:
        return anthropic_event({"type": "content_block_delta", "index": 0, "delta": value})

    assert anthropic_partial([start, ping, text_block, delta({"type": "text_delta", "text": "Hi"}), ping]) == \
        ("Hi", 1, 0)
    assert [anthropic_partial([start, text_block, d]) for d in (
        delta({"type": "thinking_delta", "text": "hm"}), delta({"type": "text_delta", "text": 5}), delta(None),
        b"data: 1\n\n",
    )] == [None, None, None, None]


def test_a_messages_stream_is_rescued_when_its_request_translates_to_the_openai_dialect() -> None:
    def messages(body: bytes | None) -> RequestRecord:
        r = RequestRecord("req", "messages")
        r.payload, r.body = {"model": "m", "messages": []}, body
        return r

    plain = orjson.dumps({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    native_only = orjson.dumps({"model": "m", "max_tokens": 10, "container": "c",
                                "messages": [{"role": "user", "content": "hi"}]})
    cut = UpstreamConnectionError("cut")
    assert [Rescue().can_rescue(messages(body), cut) for body in (plain, native_only, b"[]", b"{nope", None)] == [
        True, False, False, False, False]
