"""Anthropic ⇄ OpenAI round trips: the golden corpus and random conversations.

Every file in ``golden/`` is a pair written by hand: the same request,
response or stream in both dialects. Each pair is translated both ways —
Anthropic→OpenAI→Anthropic and OpenAI→Anthropic→OpenAI — and each
translation must equal the other side of the pair. The hypothesis tests
check the same invariant on random conversations.

"Equal" means equal after :func:`canonical_anthropic` /
:func:`canonical_openai`, which apply only equivalences the APIs themselves
define (listed in their docstrings); a stream is compared as its event
sequence plus the message the official SDK accumulates from it. What does
not survive is a documented lossy corner, tested in ``test_inbound.py``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgate.providers.anthropic.inbound import chat_completion_to_message, messages_to_chat_request
from labgate.providers.anthropic.inbound_stream import EventTranslator
from labgate.providers.anthropic.stream import StreamTranslator
from labgate.providers.anthropic.translate import (
    TOOL_ERROR_MARK,
    chat_request_to_messages,
    message_to_chat_completion,
)
from labgate.providers.base import StreamInfo
from labgate.providers.sse import SSEBuffer, event_fields
from labgate.testing.anthropic_stream import accumulate

GOLDEN = Path(__file__).parent / "golden"
CASES = {path.stem: json.loads(path.read_text()) for path in sorted(GOLDEN.glob("*.json"))}
CREATED = 1767225600  # the `created` of every OpenAI body in the corpus
EMPTY_SCHEMA = {"type": "object", "properties": {}}


def of_kind(kind: str) -> list[str]:
    return [name for name, case in CASES.items() if case["kind"] == kind]


def test_the_corpus_has_at_least_forty_pairs_of_each_shape() -> None:
    counts = {kind: len(of_kind(kind)) for kind in ("request", "response", "stream")}
    assert sum(counts.values()) == len(CASES) >= 40
    assert min(counts.values()) >= 10


# ---------------------------------------------------------------- translating


def a_to_o(body: dict[str, Any]) -> dict[str, Any]:
    translated, native_only = messages_to_chat_request(body)
    assert native_only is None
    return translated


def o_to_a(body: dict[str, Any]) -> dict[str, Any]:
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 4096
    return chat_request_to_messages(body, model=body["model"], default_max_tokens=max_tokens,
                                    stream=body.get("stream") is True)


def message_to_completion(message: dict[str, Any]) -> dict[str, Any]:
    return message_to_chat_completion(message, created=CREATED, where="golden")


def completion_to_message(completion: dict[str, Any]) -> dict[str, Any]:
    return chat_completion_to_message(completion, where="golden")


def sse_of_events(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


def sse_of_chunks(chunks: list[Any]) -> bytes:
    return b"".join(b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n\n" for c in chunks)


def parse_sse(raw: bytes) -> list[Any]:
    buffer = SSEBuffer()
    out: list[Any] = []
    for event in buffer.feed(raw):
        _, data = event_fields(event)
        out.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    assert buffer.pending == b""
    return out


def pieces(raw: bytes, cuts: list[int] | None) -> list[bytes]:
    """``raw`` split at these offsets: translators must not care where the network cuts."""
    edges = [0, *sorted(c % (len(raw) + 1) for c in cuts or ()), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(edges)]


def events_to_chunks(events: list[dict[str, Any]], cuts: list[int] | None = None) -> list[Any]:
    translator = StreamTranslator(StreamInfo(), include_usage=True, created=CREATED, where="golden")
    out = b"".join(translator.feed(piece) for piece in pieces(sse_of_events(events), cuts))
    assert translator.done
    return parse_sse(out)


def chunks_to_events(chunks: list[Any], cuts: list[int] | None = None) -> list[dict[str, Any]]:
    translator = EventTranslator(where="golden")
    out = b"".join(translator.feed(piece) for piece in pieces(sse_of_chunks(chunks), cuts))
    assert translator.done
    return parse_sse(out)


# ---------------------------------------------------------------- what "equal" means


def canonical_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request in one spelling. Equivalences applied (Anthropic's own):

    - content given as a string is one text block; a system string is one system text block;
    - consecutive turns of one role are one turn (the API merges them);
    - a tool result's content of one text block is that string; empty content is no content;
      ``is_error: false`` is no ``is_error``;
    - with tools, no ``tool_choice`` is ``{"type": "auto"}`` (the API's default);
    - ``disable_parallel_tool_use: false``, an empty description, ``stream: false``, empty
      ``stop_sequences`` and ``metadata.user_id: null`` are their absence.
    """
    out = {k: v for k, v in body.items() if v is not None and k not in ("messages", "system")}
    system = body.get("system")
    if system:
        out["system"] = [{"type": "text", "text": system}] if isinstance(system, str) else [
            {"type": "text", "text": b["text"]} for b in system]
    turns: list[dict[str, Any]] = []
    for message in body["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        blocks = [_canonical_block(b) for b in blocks]
        if turns and turns[-1]["role"] == message["role"]:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": message["role"], "content": blocks})
    out["messages"] = turns
    if out.get("tools"):
        out.setdefault("tool_choice", {"type": "auto"})
    choice = out.get("tool_choice")
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is False:
        out["tool_choice"] = {k: v for k, v in choice.items() if k != "disable_parallel_tool_use"}
    if "tools" in out:
        out["tools"] = [{k: v for k, v in t.items() if not (k == "description" and not v)} for t in out["tools"]]
    for key, empty in (("stream", False), ("stop_sequences", []), ("metadata", {"user_id": None})):
        if out.get(key) == empty:
            del out[key]
    return out


def _canonical_block(block: dict[str, Any]) -> dict[str, Any]:
    if block["type"] != "tool_result":
        return block
    out = {"type": "tool_result", "tool_use_id": block["tool_use_id"]}
    content = block.get("content")
    if isinstance(content, list) and len(content) == 1 and content[0]["type"] == "text":
        content = content[0]["text"]
    if content:
        out["content"] = content
    if block.get("is_error"):
        out["is_error"] = True
    return out


def canonical_openai(body: dict[str, Any]) -> dict[str, Any]:
    """A chat request in one spelling. Equivalences applied (OpenAI's own, or labgate's business):

    - ``max_tokens`` is ``max_completion_tokens``; ``developer`` is ``system``;
    - content of one text part is that string; an assistant's empty content is ``null``;
      a tool message's missing content is ``""``;
    - tool-call arguments compare as the JSON they encode; a tool call's type is ``function``;
    - with tools, no ``tool_choice`` is ``"auto"`` (the API's default);
    - a stop string is a list of one; an empty description, a missing ``parameters`` (the
      empty schema), ``parallel_tool_calls: true`` and ``stream: false`` are their absence;
    - ``stream_options`` is how labgate asks for usage, not part of the request's meaning.
    """
    out = {k: v for k, v in body.items() if v is not None and k not in ("messages", "stream_options")}
    if "max_tokens" in out:
        out["max_completion_tokens"] = out.pop("max_tokens")
    out["messages"] = [_canonical_message(m) for m in body["messages"]]
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    if out.get("tools"):
        out.setdefault("tool_choice", "auto")
        out["tools"] = [{"type": "function", "function": {
            **{k: v for k, v in t["function"].items() if not (k == "description" and not v)},
            "parameters": t["function"].get("parameters") or EMPTY_SCHEMA}} for t in out["tools"]]
    for key, default in (("parallel_tool_calls", True), ("stream", False), ("stop", [])):
        if out.get(key) == default:
            del out[key]
    return out


def _canonical_message(message: dict[str, Any]) -> dict[str, Any]:
    out = dict(message)
    if out["role"] == "developer":
        out["role"] = "system"
    content = out.get("content")
    if isinstance(content, list) and len(content) == 1 and content[0]["type"] == "text":
        out["content"] = content[0]["text"]
    if out["role"] == "assistant" and not out.get("content"):
        out["content"] = None
    if out["role"] == "tool" and out.get("content") is None:
        out["content"] = ""
    if out.get("tool_calls"):
        out["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
            "name": c["function"]["name"], "arguments": orjson.loads(c["function"]["arguments"] or "{}")}}
            for c in out["tool_calls"]]
    else:
        out.pop("tool_calls", None)
    return out


def canonical_completion(completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion whose tool-call arguments compare as the JSON they encode."""
    message = completion["choices"][0]["message"]
    if message.get("tool_calls"):
        message = {**message, "tool_calls": [
            {**c, "function": {**c["function"], "arguments": orjson.loads(c["function"]["arguments"])}}
            for c in message["tool_calls"]]}
    return {**completion, "choices": [{**completion["choices"][0], "message": message}]}


def stream_meaning(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """An Anthropic stream as its events without usage (whose placement may differ), and
    the final message a client accumulates from it (usage included; labgate.testing.anthropic_stream)."""
    sequence = []
    for event in events:
        if event["type"] == "message_start":
            event = {**event, "message": {k: v for k, v in event["message"].items() if k != "usage"}}
        elif event["type"] == "message_delta":
            event = {k: v for k, v in event.items() if k != "usage"}
        sequence.append(event)
    return sequence, accumulate(events)


# ---------------------------------------------------------------- the golden corpus


@pytest.mark.parametrize("name", of_kind("request"))
def test_golden_request(name: str) -> None:
    case = CASES[name]
    anthropic, openai = case["anthropic"], case["openai"]
    assert a_to_o(anthropic) == openai  # exactly what is sent, byte for byte once dumped
    assert canonical_anthropic(o_to_a(openai)) == canonical_anthropic(anthropic)
    assert canonical_anthropic(o_to_a(a_to_o(anthropic))) == canonical_anthropic(anthropic)
    assert canonical_openai(a_to_o(o_to_a(openai))) == canonical_openai(openai)


@pytest.mark.parametrize("name", of_kind("response"))
def test_golden_response(name: str) -> None:
    case = CASES[name]
    anthropic, openai = case["anthropic"], case["openai"]
    assert message_to_completion(anthropic) == openai
    assert completion_to_message(openai) == anthropic
    assert completion_to_message(message_to_completion(anthropic)) == anthropic
    assert canonical_completion(message_to_completion(completion_to_message(openai))) == canonical_completion(openai)


@pytest.mark.parametrize("name", of_kind("stream"))
def test_golden_stream(name: str) -> None:
    case = CASES[name]
    anthropic, openai = case["anthropic"], case["openai"]
    assert events_to_chunks(anthropic) == openai
    assert stream_meaning(chunks_to_events(openai)) == stream_meaning(anthropic)
    assert stream_meaning(chunks_to_events(events_to_chunks(anthropic))) == stream_meaning(anthropic)
    assert events_to_chunks(chunks_to_events(openai)) == openai


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(of_kind("stream")), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_golden_streams_split_anywhere(name: str, cuts: list[int]) -> None:
    case = CASES[name]
    assert events_to_chunks(case["anthropic"], cuts) == case["openai"]
    assert chunks_to_events(case["openai"], cuts) == chunks_to_events(case["openai"])


# ---------------------------------------------------------------- random conversations

TEXT = st.text(min_size=1, max_size=24)
RESULT_TEXT = TEXT.filter(lambda t: not t.startswith(TOOL_ERROR_MARK))  # the marker is the one ambiguity
IDS = st.from_regex(r"toolu_[A-Za-z0-9]{1,10}", fullmatch=True)
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
MEDIA = st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"])
BASE64 = st.from_regex(r"[A-Za-z0-9+/]{4,40}={0,2}", fullmatch=True)
URLS = st.from_regex(r"https://example\.com/[a-z0-9/]{1,20}\.(png|jpg)", fullmatch=True)
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
INPUTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)
SCHEMAS = st.just({"type": "object", "properties": {"q": {"type": "string"}}}) | st.just(EMPTY_SCHEMA)
UNIT = st.floats(min_value=0, max_value=1, allow_nan=False)


def a_text() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda t: {"type": "text", "text": t}, TEXT)


def a_image() -> st.SearchStrategy[dict[str, Any]]:
    base64 = st.builds(lambda m, d: {"type": "image", "source": {"type": "base64", "media_type": m, "data": d}},
                       MEDIA, BASE64)
    url = st.builds(lambda u: {"type": "image", "source": {"type": "url", "url": u}}, URLS)
    return base64 | url


@st.composite
def a_tool_result(draw: st.DrawFn, tool_use_id: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    content = draw(st.none() | RESULT_TEXT | st.lists(st.builds(lambda t: {"type": "text", "text": t}, RESULT_TEXT),
                                                      min_size=1, max_size=3))
    if content is not None:
        block["content"] = content
    if draw(st.booleans()):
        block["is_error"] = draw(st.booleans())
    return block


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed conversation: user first, turns alternating, tool results answering tool uses."""
    body: dict[str, Any] = {"model": draw(NAMES), "max_tokens": draw(st.integers(1, 64000))}
    system = draw(st.none() | TEXT | st.lists(a_text(), min_size=1, max_size=3))
    if system is not None:
        body["system"] = system
    tools = draw(st.lists(st.builds(lambda n, d, s: {"name": n, "description": d, "input_schema": s},
                                    NAMES, st.text(max_size=20), SCHEMAS),
                          max_size=3, unique_by=lambda t: t["name"]))
    messages: list[dict[str, Any]] = []
    pending: list[str] = []  # tool_use ids the next user turn answers
    for turn in range(draw(st.integers(1, 6))):
        if turn % 2 == 0:
            results = [draw(a_tool_result(i)) for i in pending]
            rest = draw(st.lists(a_text() | a_image(), min_size=0 if results else 1, max_size=3))
            content: Any = results + rest
            if not results and len(rest) == 1 and rest[0]["type"] == "text" and draw(st.booleans()):
                content = rest[0]["text"]
            messages.append({"role": "user", "content": content})
            pending = []
        else:
            texts = draw(st.lists(a_text(), max_size=2))
            uses = [{"type": "tool_use", "id": draw(IDS), "name": draw(NAMES), "input": draw(INPUTS)}
                    for _ in range(draw(st.integers(0 if texts else 1, 3)))]
            pending = [u["id"] for u in uses]
            messages.append({"role": "assistant", "content": texts + uses})
    body["messages"] = messages
    if tools:
        body["tools"] = tools
        kind = draw(st.sampled_from(["auto", "any", "tool", "none", None]))
        if kind is not None:
            choice: dict[str, Any] = {"type": kind}
            if kind == "tool":
                choice["name"] = draw(st.sampled_from([t["name"] for t in tools]))
            if kind != "none" and draw(st.booleans()):
                choice["disable_parallel_tool_use"] = draw(st.booleans())
            body["tool_choice"] = choice
    optional = {"temperature": UNIT, "top_p": UNIT, "top_k": st.integers(0, 500),
                "stop_sequences": st.lists(TEXT, max_size=4), "stream": st.booleans(),
                "metadata": st.builds(lambda u: {"user_id": u}, TEXT)}
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


def o_text_part() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda t: {"type": "text", "text": t}, TEXT)


def o_image_part() -> st.SearchStrategy[dict[str, Any]]:
    data = st.builds(lambda m, d: f"data:{m};base64,{d}", MEDIA, BASE64)
    return st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, data | URLS)


@st.composite
def openai_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed chat: an optional system message, alternating turns, tool messages after tool calls."""
    body: dict[str, Any] = {"model": draw(NAMES)}
    messages: list[dict[str, Any]] = []
    system = draw(st.none() | TEXT | st.lists(o_text_part(), min_size=1, max_size=3))
    if system is not None:
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": system})
    for turn in range(draw(st.integers(1, 6))):
        if turn % 2 == 0:
            content = draw(TEXT | st.lists(o_text_part() | o_image_part(), min_size=1, max_size=3))
            messages.append({"role": "user", "content": content})
            continue
        calls = [{"id": draw(IDS), "type": "function",
                  "function": {"name": draw(NAMES), "arguments": orjson.dumps(draw(INPUTS)).decode()}}
                 for _ in range(draw(st.integers(0, 3)))]
        text = draw((st.none() if calls else st.nothing()) | TEXT | st.lists(o_text_part(), min_size=1, max_size=2))
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        messages.append(message)
        for call in calls:
            result = draw(RESULT_TEXT | st.just("") | st.lists(
                st.builds(lambda t: {"type": "text", "text": t}, RESULT_TEXT), min_size=1, max_size=3))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    body["messages"] = messages
    body[draw(st.sampled_from(["max_tokens", "max_completion_tokens"]))] = draw(st.integers(1, 64000))
    tools = draw(st.lists(st.builds(lambda n, d, s: {"type": "function", "function": {
        "name": n, "description": d, "parameters": s}}, NAMES, st.text(max_size=20), SCHEMAS),
        max_size=3, unique_by=lambda t: t["function"]["name"]))
    if tools:
        body["tools"] = tools
        names = [t["function"]["name"] for t in tools]
        choice = draw(st.sampled_from(["auto", "required", "none", "named", None]))
        if choice == "named":
            body["tool_choice"] = {"type": "function", "function": {"name": draw(st.sampled_from(names))}}
        elif choice is not None:
            body["tool_choice"] = choice
        if choice != "none" and draw(st.booleans()):
            body["parallel_tool_calls"] = draw(st.booleans())
    optional = {"temperature": UNIT, "top_p": UNIT, "stop": TEXT | st.lists(TEXT, max_size=4),
                "stream": st.booleans(), "user": TEXT}
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_requests())
def test_random_anthropic_requests_survive_the_round_trip(body: dict[str, Any]) -> None:
    assert canonical_anthropic(o_to_a(a_to_o(body))) == canonical_anthropic(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(openai_requests())
def test_random_openai_requests_survive_the_round_trip(body: dict[str, Any]) -> None:
    assert canonical_openai(a_to_o(o_to_a(body))) == canonical_openai(body)


@st.composite
def anthropic_messages(draw: st.DrawFn) -> dict[str, Any]:
    content = [{"type": "text", "text": draw(TEXT)}] if draw(st.booleans()) else []
    content += [{"type": "tool_use", "id": draw(IDS), "name": draw(NAMES), "input": draw(INPUTS)}
                for _ in range(draw(st.integers(0, 3)))]
    usage = {"input_tokens": draw(st.integers(0, 10**6)), "output_tokens": draw(st.integers(0, 10**5))}
    if draw(st.booleans()):
        usage["cache_read_input_tokens"] = draw(st.integers(1, 10**6))
    return {"id": draw(st.from_regex(r"msg_[A-Za-z0-9]{1,20}", fullmatch=True)), "type": "message",
            "role": "assistant", "model": draw(NAMES), "content": content,
            "stop_reason": draw(st.sampled_from(["end_turn", "max_tokens", "tool_use", "refusal"])),
            "stop_sequence": None, "usage": usage}


@st.composite
def openai_completions(draw: st.DrawFn) -> dict[str, Any]:
    calls = [{"id": draw(IDS), "type": "function",
              "function": {"name": draw(NAMES), "arguments": orjson.dumps(draw(INPUTS)).decode()}}
             for _ in range(draw(st.integers(0, 3)))]
    message: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | TEXT)}
    if calls:
        message["tool_calls"] = calls
    prompt, completion = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**5))
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    cached = draw(st.integers(0, prompt))
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    return {"id": draw(st.from_regex(r"chatcmpl-[A-Za-z0-9]{1,20}", fullmatch=True)), "object": "chat.completion",
            "created": CREATED, "model": draw(NAMES),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}], "usage": usage}


@settings(max_examples=200, deadline=None)
@given(anthropic_messages())
def test_random_anthropic_responses_survive_the_round_trip(message: dict[str, Any]) -> None:
    assert completion_to_message(message_to_completion(message)) == message


@settings(max_examples=200, deadline=None)
@given(openai_completions())
def test_random_openai_responses_survive_the_round_trip(completion: dict[str, Any]) -> None:
    back = message_to_completion(completion_to_message(completion))
    assert canonical_completion(back) == canonical_completion(completion)


# A stream plan: blocks of ("text", pieces) or ("tool", id, name, argument fragments), rendered
# in both dialects the way the corpus writes them; no two text blocks in a row (OpenAI has no
# block boundaries inside text).


@st.composite
def stream_plans(draw: st.DrawFn) -> dict[str, Any]:
    blocks: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(0, 4))):
        if (not blocks or blocks[-1][0] != "text") and draw(st.booleans()):
            blocks.append(("text", draw(st.lists(TEXT, min_size=1, max_size=4))))
        else:
            arguments = orjson.dumps(draw(INPUTS)).decode()
            cuts = sorted(draw(st.lists(st.integers(1, max(1, len(arguments) - 1)), max_size=3, unique=True)))
            edges = [0, *[c for c in cuts if c < len(arguments)], len(arguments)]
            fragments = [arguments[a:b] for a, b in itertools.pairwise(edges) if a < b]
            if arguments == "{}" and draw(st.booleans()):
                fragments = []  # a call with no arguments streams none
            blocks.append(("tool", draw(IDS), draw(NAMES), fragments))
    tools = any(b[0] == "tool" for b in blocks)
    stop = "tool_use" if tools else draw(st.sampled_from(["end_turn", "max_tokens"]))
    return {"id": draw(st.from_regex(r"msg_[A-Za-z0-9]{1,12}", fullmatch=True)), "model": draw(NAMES),
            "blocks": blocks, "stop": stop, "input": draw(st.integers(0, 10**5)),
            "output": draw(st.integers(0, 10**4)), "cached": draw(st.integers(0, 10**4))}


def plan_events(plan: dict[str, Any]) -> list[dict[str, Any]]:
    usage = {"input_tokens": plan["input"], "output_tokens": 1}
    if plan["cached"]:
        usage["cache_read_input_tokens"] = plan["cached"]
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": plan["id"], "type": "message", "role": "assistant",
                                              "model": plan["model"], "content": [], "stop_reason": None,
                                              "stop_sequence": None, "usage": usage}},
        {"type": "ping"}]
    for index, block in enumerate(plan["blocks"]):
        if block[0] == "text":
            opened: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": t} for t in block[1]]
        else:
            opened = {"type": "tool_use", "id": block[1], "name": block[2], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in block[3]]
        events.append({"type": "content_block_start", "index": index, "content_block": opened})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": plan["stop"], "stop_sequence": None},
                   "usage": {"output_tokens": plan["output"]}})
    events.append({"type": "message_stop"})
    return events


def plan_chunks(plan: dict[str, Any]) -> list[Any]:
    head = {"id": "chatcmpl-" + plan["id"].removeprefix("msg_"), "object": "chat.completion.chunk",
            "created": CREATED, "model": plan["model"]}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    chunks: list[Any] = [chunk({"role": "assistant", "content": ""})]
    tool = 0
    for block in plan["blocks"]:
        if block[0] == "text":
            chunks += [chunk({"content": t}) for t in block[1]]
            continue
        chunks.append(chunk({"tool_calls": [{"index": tool, "id": block[1], "type": "function",
                                             "function": {"name": block[2], "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{"index": tool, "function": {"arguments": f}}]}) for f in block[3]]
        tool += 1
    finish = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls"}[plan["stop"]]
    prompt = plan["input"] + plan["cached"]
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": plan["output"],
                             "total_tokens": prompt + plan["output"]}
    if plan["cached"]:
        usage["prompt_tokens_details"] = {"cached_tokens": plan["cached"]}
    return [*chunks, chunk({}, finish), {**head, "choices": [], "usage": usage}, "[DONE]"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_plans(), st.lists(st.integers(min_value=0), max_size=12))
def test_random_streams_survive_the_round_trip(plan: dict[str, Any], cuts: list[int]) -> None:
    events, chunks = plan_events(plan), plan_chunks(plan)
    assert events_to_chunks(events, cuts) == chunks
    assert stream_meaning(chunks_to_events(chunks, cuts)) == stream_meaning(events)
    assert stream_meaning(chunks_to_events(events_to_chunks(events))) == stream_meaning(events)
    assert events_to_chunks(chunks_to_events(chunks)) == chunks


def test_the_stream_helpers_agree_with_the_corpus() -> None:
    """The random-stream renderers write what the hand-written corpus writes."""
    plan = {"id": "msg_s1", "model": "claude-sonnet-4-5", "stop": "tool_use", "input": 410, "output": 66, "cached": 0,
            "blocks": [("text", ["Let me check ", "both."]),
                       ("tool", "toolu_A", "get_weather", ["{\"city\":", "\"Paris\"}"]),
                       ("tool", "toolu_B", "get_time", ["{\"tz\":", "\"Asia/Tokyo\"}"])]}
    case = CASES["stream-text-two-tools"]
    assert plan_chunks(plan) == case["openai"]
    assert plan_events(plan) == case["anthropic"]
