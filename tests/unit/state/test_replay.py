"""Assembling a finished stream into a whole answer, and replaying a whole answer as a stream."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.state.replay import assemble, replay

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
call = st.fixed_dictionaries({"id": st.from_regex(r"call_[a-z0-9]{4}", fullmatch=True),
                              "type": st.just("function"),
                              "function": st.fixed_dictionaries({"name": st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                                                                 "arguments": text})})


@st.composite
def chat_completions(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for index in range(draw(st.integers(1, 3))):
        calls = draw(st.lists(call, max_size=3))
        content = draw(st.one_of(st.none(), text)) if calls else draw(text)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": index, "message": message, "logprobs": None,
                        "finish_reason": "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))})
    return {"id": "chatcmpl-1", "created": 1, "model": "m", "object": "chat.completion", "choices": choices,
            "usage": {"prompt_tokens": draw(st.integers(0, 99)), "completion_tokens": draw(st.integers(0, 99)),
                      "total_tokens": 0}}


def _split(events: list[bytes], cut: int) -> list[bytes]:
    """The same bytes, re-chunked at arbitrary places (streams arrive split anywhere)."""
    data = b"".join(events)
    return [data[i:i + cut] for i in range(0, len(data), cut)]


@settings(max_examples=150, deadline=None)
@given(chat_completions(), st.integers(1, 50))
def test_openai_chat_replay_then_assemble_is_the_identity(doc: dict[str, Any], cut: int) -> None:
    events = replay(doc, dialect="openai", endpoint="chat", include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    assert assemble(_split(events, cut), dialect="openai", endpoint="chat") == doc


@settings(max_examples=100, deadline=None)
@given(st.lists(text, min_size=1, max_size=3), st.sampled_from(["stop", "length"]))
def test_openai_completion_round_trip(texts: list[str], finish: str) -> None:
    doc = {"id": "cmpl-1", "created": 1, "model": "m", "object": "text_completion",
           "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": finish}
                       for i, t in enumerate(texts)]}
    events = replay(doc, dialect="openai", endpoint="completions", include_usage=False)
    assert assemble(events, dialect="openai", endpoint="completions") == doc


values = st.one_of(text, st.integers(-(2**63), 2**63 - 1), st.booleans())  # what JSON parsing can give


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            blocks.append({"type": "text", "text": draw(text)})
        else:
            blocks.append({"type": "tool_use", "id": "toolu_1", "name": "lookup",
                           "input": draw(st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), values,
                                                         max_size=3))})
    if draw(st.booleans()):
        blocks.insert(0, {"type": "thinking", "thinking": draw(text), "signature": "sig"})
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": blocks,
            "stop_reason": draw(st.sampled_from(["end_turn", "max_tokens", "tool_use"])), "stop_sequence": None,
            "usage": {"input_tokens": draw(st.integers(0, 99)), "output_tokens": draw(st.integers(0, 99))}}


@settings(max_examples=150, deadline=None)
@given(messages(), st.integers(1, 60))
def test_anthropic_replay_then_assemble_is_the_identity(doc: dict[str, Any], cut: int) -> None:
    events = replay(doc, dialect="anthropic", endpoint="messages", include_usage=True)
    assert events[0].startswith(b"event: message_start\n")
    assert events[-1].startswith(b"event: message_stop\n")
    assert assemble(_split(events, cut), dialect="anthropic", endpoint="messages") == doc


def test_usage_chunk_only_when_the_client_asked() -> None:
    doc = {"id": "c", "created": 1, "model": "m", "object": "chat.completion",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": None,
                        "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                             "total_tokens": 2}}
    without = replay(doc, dialect="openai", endpoint="chat", include_usage=False)
    assert not any(b'"usage"' in e for e in without)
    with_usage = replay(doc, dialect="openai", endpoint="chat", include_usage=True)
    assert orjson.loads(with_usage[-2][6:]) == {"id": "c", "created": 1, "model": "m",
                                                "object": "chat.completion.chunk", "choices": [],
                                                "usage": doc["usage"]}


def test_unfinished_streams_assemble_to_nothing() -> None:
    chunk = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    assert assemble([chunk], dialect="openai", endpoint="chat") is None  # no [DONE]: cut short
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","content":[],'
             b'"usage":{"input_tokens":1}}}\n\n')
    assert assemble([start], dialect="anthropic", endpoint="messages") is None  # no message_stop
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
    assert assemble([start, error], dialect="anthropic", endpoint="messages") is None
    in_stream_error = b'data: {"error":{"message":"boom"}}\n\ndata: [DONE]\n\n'
    assert assemble([in_stream_error], dialect="openai", endpoint="chat") is None
