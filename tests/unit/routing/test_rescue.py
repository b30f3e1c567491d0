"""Stream rescue's pure parts: the partial answer read back from relayed events, and what may be rescued."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgate.config.load import build_config
from labgate.errors import AttemptFailure, InternalError, UpstreamBadResponseError, UpstreamConnectionError
from labgate.providers.base import StreamInfo, Usage
from labgate.record import RequestRecord
from labgate.routing import rescue as rescue_module
from labgate.routing.circuit import Circuit
from labgate.routing.rescue import Rescue, anthropic_partial, partial_text, trailer
from labgate.routing.table import Deployment, RouteTable


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


# ---------------------------------------------------------------- resume, with the attempt loop faked


class Broken:
    """The stream that broke: its info, its dialect, and whether closing it fails."""

    def __init__(self, dialect: str = "openai", close_fails: bool = False) -> None:
        self.info = StreamInfo(usage=Usage(7, 3), first_token=123.5)
        self.dialect, self.close_fails, self.closed = dialect, close_fails, False

    async def aclose(self) -> None:
        self.closed = True
        if self.close_fails:
            raise OSError("reset while closing")


class Continuation:
    """The continuation the faked attempt loop answers with: OpenAI-dialect chunks."""

    dialect = "openai"

    def __init__(self, chunks: list[bytes]) -> None:
        self.info, self._chunks, self.closed = StreamInfo(), iter(chunks), False

    def __aiter__(self) -> Continuation:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.closed = True


class Limiter:
    def __init__(self) -> None:
        self.settled: list[tuple[Any, ...]] = []

    def settle_served(self, *args: Any) -> None:
        self.settled.append(args)


def runtime(max_attempts: int = 3, limiter: Limiter | None = None) -> SimpleNamespace:
    """Three providers serving model ``m``, one group each, tried a, b, c."""
    providers = {name: {"type": "vllm", "priority": i, "models": ["m"]} for i, name in enumerate("abc", 1)}
    config = build_config({"providers": {"providers": providers}}, {}, source="test")
    table = RouteTable(config, {name: SimpleNamespace(endpoints=frozenset({"chat"})) for name in providers})  # type: ignore[misc]
    return SimpleNamespace(table=table, circuit=Circuit(failure_threshold=3, cooldown_s=30), max_attempts=max_attempts,
                           request_timeout=30.0, queue=object(), limiter=limiter, pace=object())


def chat_record(rescues: int = 0) -> RequestRecord:
    r = RequestRecord("req", "chat", model="m")
    r.payload, r.rescues = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, rescues
    return r


def faked_attempt(monkeypatch: pytest.MonkeyPatch, rt: SimpleNamespace, answer: Continuation,
                  ) -> list[tuple[list[str], dict[str, Any]]]:
    calls: list[tuple[list[str], dict[str, Any]]] = []

    async def attempt(candidates: list[Deployment], **kwargs: Any) -> tuple[Continuation, Deployment]:
        calls.append(([d.key for d in candidates], kwargs))
        candidates[0].health.inflight += 1
        return answer, candidates[0]

    monkeypatch.setattr(rescue_module, "attempt", attempt)
    return calls


def deployment(rt: SimpleNamespace, key: str) -> Deployment:
    return next(d for g in rt.table.resolve("m").groups for d in g.deployments if d.key == key)


@pytest.mark.asyncio
async def test_resume_hands_the_attempt_loop_the_runtime_the_prefill_and_what_is_left_of_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = Limiter()
    rt, answer = runtime(limiter=limiter), Continuation([])
    calls = faked_attempt(monkeypatch, rt, answer)
    record, broken, failed = chat_record(rescues=1), Broken(close_fails=True), deployment(rt, "a/m")
    record.started -= 5.0  # the request began 5 s ago: 25 s of its 30 s are left
    failed.health.inflight = 1
    cut = UpstreamConnectionError("cut")
    result = await Rescue(max_rescues=2).resume(rt, record, broken, failed, cut,  # type: ignore[arg-type]
                                                [event({"content": "The"}), event({"content": " fox"})])
    assert result == (answer, deployment(rt, "b/m"))
    [(candidates, kwargs)] = calls
    deadline = kwargs.pop("deadline")
    assert time.monotonic() + 20 < deadline <= time.monotonic() + 25
    assert (candidates, kwargs) == (["b/m", "c/m"], {
        "endpoint": "chat", "stream": True, "circuit": rt.circuit, "record": record,
        "queue": rt.queue, "limits": limiter, "pace": rt.pace,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "The fox"}]}})
    assert (record.rescues, record.first_token, [(f.deployment, f.error) for f in record.failures]) == (
        2, 123.5, [("a/m", cut)])
    assert limiter.settled == [(record, failed, broken.info.usage, "The fox")]
    assert (broken.closed, failed.health.inflight, answer.closed) == (True, 0, False)  # its close failing is no matter


@pytest.mark.asyncio
async def test_resume_plans_past_every_deployment_already_tried_within_the_attempt_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for max_attempts, earlier, expected in ((1, [], ["b/m"]), (3, ["b/m"], ["c/m"]), (1, ["b/m"], ["c/m"])):
        rt = runtime(max_attempts=max_attempts)
        calls = faked_attempt(monkeypatch, rt, Continuation([]))
        record = chat_record()
        record.failures = [AttemptFailure(key, UpstreamConnectionError("refused")) for key in earlier]
        await Rescue().resume(rt, record, Broken(), deployment(rt, "a/m"),  # type: ignore[arg-type]
                              UpstreamConnectionError("cut"), [event({"content": "x"})])
        assert [candidates for candidates, _ in calls] == [expected], (max_attempts, earlier)


@pytest.mark.asyncio
async def test_resume_refuses_what_cannot_be_rescued_without_an_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime()
    calls = faked_attempt(monkeypatch, rt, Continuation([]))
    for record, error in ((chat_record(rescues=1), UpstreamConnectionError("cut")), (chat_record(), InternalError())):
        assert await Rescue().resume(rt, record, Broken(), deployment(rt, "a/m"), error,  # type: ignore[arg-type]
                                     [event({"content": "x"})]) is None
    assert calls == []


@pytest.mark.asyncio
async def test_an_anthropic_stream_goes_on_as_anthropic_events_after_the_blocks_it_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime()
    more = b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": " more"}}]}) + b"\n\n"
    faked_attempt(monkeypatch, rt, Continuation([more, b"data: {not json\n\n"]))
    record = chat_record()
    record.endpoint = "messages"
    record.body = orjson.dumps({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    start = anthropic_event({"type": "message_start", "message": {}})
    text_block = anthropic_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}})
    delta = anthropic_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})
    stop = anthropic_event({"type": "content_block_stop", "index": 0})
    resumed = await Rescue().resume(rt, record, Broken("anthropic"), deployment(rt, "a/m"),  # type: ignore[arg-type]
                                    UpstreamConnectionError("cut"), [start, text_block, delta, stop])
    assert resumed is not None
    stream = resumed[0]
    assert stream.dialect == "anthropic"
    first = await anext(aiter(stream))
    assert [orjson.loads(line[len(b"data: "):]) for line in first.split(b"\n") if line.startswith(b"data: ")] == [
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " more"}}]
    with pytest.raises(UpstreamBadResponseError, match=r"^provider 'b' sent a stream event that is not JSON"):
        await anext(aiter(stream))
