"""The attempt loop: fall through retryable failures, stop on deterministic ones, name every cause."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from labgate.errors import (
    AllAttemptsFailedError,
    AttemptFailure,
    DeploymentBusyError,
    LabgateError,
    NoHealthyDeploymentError,
    ProviderLimitedError,
    UnsupportedEndpointError,
    UpstreamConnectionError,
    UpstreamDeploymentError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from labgate.providers.base import Call, IteratorStream, Reply, Stream
from labgate.record import RequestRecord
from labgate.routing import attempts
from labgate.routing.attempts import UNCAPPED, attempt, planned
from labgate.routing.circuit import Circuit, Health
from labgate.routing.gate import Gate, Waiter
from labgate.routing.pace import Pace, Timeouts
from labgate.routing.table import Deployment
from labgate.telemetry.traces import Trace

BODY: dict[str, Any] = {"model": "public", "messages": [{"role": "user", "content": "hi"}]}
CIRCUIT = Circuit(failure_threshold=3, cooldown_s=30)


class FakeAdapter:
    """Answers with ``outcome`` (a Reply, a Stream, or an exception to raise) and keeps each Call."""

    def __init__(self, outcome: Reply | Stream | BaseException,
                 endpoints: frozenset[str] = frozenset({"chat", "completions"})) -> None:
        self.outcome = outcome
        self.endpoints = endpoints
        self.calls: list[tuple[str, Call]] = []

    async def _answer(self, kind: str, call: Call) -> Any:
        self.calls.append((kind, call))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    async def send(self, call: Call) -> Reply:
        return await self._answer("send", call)

    async def stream(self, call: Call) -> Stream:
        return await self._answer("stream", call)

    async def aclose(self) -> None:
        pass


def dep(key: str, outcome: Reply | Stream | BaseException, *, timeout: float = 60.0,
        endpoints: frozenset[str] = frozenset({"chat", "completions"})) -> Deployment:
    provider, _, model = key.partition("/")
    return Deployment(key, provider, model, FakeAdapter(outcome, endpoints), timeout)


def calls(d: Deployment) -> list[tuple[str, Call]]:
    return d.adapter.calls  # type: ignore[attr-defined]


async def run(candidates: list[Deployment], record: RequestRecord, *, endpoint: str = "chat",
              stream: bool = False, deadline_in: float = 600.0) -> tuple[Reply | Stream, Deployment]:
    return await attempt(candidates, endpoint=endpoint, body=BODY, stream=stream,  # type: ignore[arg-type]
                         deadline=time.monotonic() + deadline_in, circuit=CIRCUIT, record=record)


async def failed(candidates: list[Deployment], record: RequestRecord, **kwargs: Any) -> LabgateError:
    with pytest.raises(LabgateError) as info:
        await run(candidates, record, **kwargs)
    return info.value


async def failed_with(candidates: list[Deployment], record: RequestRecord, *, deadline: float | None = None,
                      **kwargs: Any) -> LabgateError:
    """The error of an attempt at a chat reply (``kwargs``: more of ``attempt``'s arguments)."""
    with pytest.raises(LabgateError) as info:
        await attempt(candidates, endpoint="chat", body=BODY, stream=False, circuit=CIRCUIT, record=record,
                      deadline=time.monotonic() + 600 if deadline is None else deadline, **kwargs)
    return info.value


def new_record() -> RequestRecord:
    return RequestRecord("req-1", "chat")


REPLY = Reply(b'{"id": "x"}')


@pytest.mark.asyncio
async def test_first_candidate_answers() -> None:
    first, second, record = dep("a/m1", REPLY), dep("b/m2", REPLY), new_record()
    assert await run([first, second], record) == (REPLY, first)
    assert calls(first) == [("send", Call("chat", BODY, "m1", 60.0, "req-1"))]
    assert calls(second) == []
    assert (record.attempts, record.provider, record.deployment, record.failures) == (1, "a", "a/m1", [])
    assert first.health == Health()


@pytest.mark.asyncio
async def test_retryable_failure_falls_through_to_the_next() -> None:
    boom = UpstreamStatusError("upstream answered 503", upstream_status=503)
    first, second, record = dep("a/m", boom), dep("b/m", REPLY), new_record()
    assert await run([first, second], record) == (REPLY, second)
    assert (record.attempts, record.provider, record.deployment, record.failures) == (
        2, "b", "b/m", [AttemptFailure("a/m", boom)])
    assert (first.health, second.health) == (Health(failures=1, last_error="upstream answered 503"), Health())


@pytest.mark.asyncio
async def test_a_success_resets_the_circuit_of_its_deployment() -> None:
    d, record = dep("a/m", REPLY), new_record()
    d.health.failures, d.health.last_error = 2, "earlier"
    await run([d], record)
    assert d.health == Health(failures=0, open_until=0.0, last_error="earlier")


@pytest.mark.asyncio
async def test_rejected_request_stops_at_once() -> None:
    rejected = UpstreamRejectedError("context length exceeded", status=400, param="messages")
    first, second, record = dep("a/m", rejected), dep("b/m", REPLY), new_record()
    assert await failed([first, second], record) is rejected
    assert (calls(second), record.attempts, record.failures) == ([], 1, [])
    assert first.health == Health()  # the upstream is fine; the request was not


@pytest.mark.asyncio
async def test_all_failing_names_each_cause() -> None:
    errors = [UpstreamConnectionError("connection refused"), UpstreamStatusError("500 Internal", upstream_status=500),
              UpstreamTimeoutError("no answer within 60s")]
    record = new_record()
    error = await failed([dep("a/m", errors[0]), dep("b/m", errors[1]), dep("c/m", errors[2])], record)
    assert isinstance(error, AllAttemptsFailedError)
    assert (error.status, error.openai_type, error.message, error.failures) == (
        502, "api_error",
        "All 3 attempt(s) failed: a/m: connection refused; b/m: 500 Internal; c/m: no answer within 60s",
        (AttemptFailure("a/m", errors[0]), AttemptFailure("b/m", errors[1]), AttemptFailure("c/m", errors[2])))
    assert record.attempts == 3


@pytest.mark.asyncio
async def test_all_timed_out_is_504() -> None:
    error = await failed([dep("a/m", UpstreamTimeoutError("t1")), dep("b/m", UpstreamTimeoutError("t2"))],
                         new_record())
    assert (type(error), error.status, error.openai_type, error.anthropic_type) == (
        AllAttemptsFailedError, 504, "timeout_error", "timeout_error")


@pytest.mark.asyncio
async def test_all_rate_limited_is_429_with_the_soonest_retry_after() -> None:
    error = await failed([dep("a/m", UpstreamRateLimitError("slow down", retry_after=20)),
                          dep("b/m", UpstreamRateLimitError("slow down", retry_after=3)),
                          dep("c/m", UpstreamRateLimitError("slow down"))], new_record())
    assert (type(error), error.status, error.openai_type, error.retry_after) == (  # type: ignore[attr-defined]
        AllAttemptsFailedError, 429, "rate_limit_error", 3)


@pytest.mark.asyncio
async def test_rate_limited_and_timed_out_is_502() -> None:
    error = await failed([dep("a/m", UpstreamRateLimitError("slow down")), dep("b/m", UpstreamTimeoutError("t"))],
                         new_record())
    assert (type(error), error.status, error.openai_type, error.retry_after) == (  # type: ignore[attr-defined]
        AllAttemptsFailedError, 502, "api_error", None)


@pytest.mark.asyncio
async def test_unsupported_endpoint_is_skipped() -> None:
    chat_only = dep("a/m", REPLY, endpoints=frozenset({"chat"}))
    embedder = dep("b/e", REPLY, endpoints=frozenset({"embeddings"}))
    record = new_record()
    assert await run([chat_only, embedder], record, endpoint="embeddings") == (REPLY, embedder)
    assert (calls(chat_only), record.attempts, [(f.deployment, type(f.error), f.error.message)
                                                for f in record.failures]) == (
        [], 1, [("a/m", UnsupportedEndpointError, "provider 'a' does not serve embeddings")])


@pytest.mark.asyncio
async def test_all_unsupported_raises_that_error() -> None:
    record = new_record()
    error = await failed([dep("a/m", REPLY), dep("b/m", REPLY)], record, endpoint="embeddings")
    assert (type(error), error.status, error.message, record.attempts) == (
        UnsupportedEndpointError, 400, "provider 'a' does not serve embeddings", 0)


@pytest.mark.asyncio
async def test_deadline_passed_is_a_timeout_failure() -> None:
    first, record = dep("a/m", REPLY), new_record()
    error = await failed([first, dep("b/m", REPLY)], record, deadline_in=-0.01)
    assert (type(error), error.status, calls(first), record.attempts) == (AllAttemptsFailedError, 504, [], 0)
    assert [(f.deployment, type(f.error), f.error.message) for f in record.failures] == [
        ("a/m", UpstreamTimeoutError, "the request's total deadline passed before this attempt")]


@pytest.mark.asyncio
async def test_each_attempt_gets_at_most_the_time_left() -> None:
    fast, record = dep("a/m", REPLY, timeout=60.0), new_record()
    await run([fast], record, deadline_in=0.5)
    assert 0.4 < calls(fast)[0][1].timeout <= 0.5
    short = dep("b/m", REPLY, timeout=2.0)
    await run([short], new_record())
    assert calls(short)[0][1].timeout == 2.0


@pytest.mark.asyncio
async def test_inflight_returns_to_zero_for_non_stream_outcomes() -> None:
    ok, failing = dep("a/m", REPLY), dep("b/m", UpstreamConnectionError("refused"))
    rejected, crashing = dep("c/m", UpstreamRejectedError("bad", status=422)), dep("d/m", RuntimeError("bug"))
    await run([failing, ok], new_record())
    with pytest.raises(UpstreamRejectedError):
        await run([rejected], new_record())
    with pytest.raises(RuntimeError):
        await run([crashing], new_record())
    assert [d.health.inflight for d in (ok, failing, rejected, crashing)] == [0, 0, 0, 0]


@pytest.mark.asyncio
async def test_a_stream_keeps_its_slot_until_it_ends() -> None:
    async def chunks() -> Any:
        yield b"data: [DONE]\n\n"

    stream = IteratorStream(chunks())
    d, failing, record = dep("a/m", stream), dep("b/m", UpstreamConnectionError("refused")), new_record()
    assert await run([failing, d], record, stream=True) == (stream, d)
    assert (calls(d)[0][0], d.health.inflight, failing.health.inflight) == ("stream", 1, 0)
    await stream.aclose()


def refused(status: int) -> UpstreamDeploymentError:
    return UpstreamDeploymentError(f"provider answered {status}: no", upstream_status=status)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_deployment_refused_falls_back_and_counts_against_its_circuit(status: int) -> None:
    first, second, record = dep("a/m", refused(status)), dep("b/m", REPLY), new_record()
    assert await run([first, second], record) == (REPLY, second)
    assert (record.attempts, record.failures) == (2, [AttemptFailure("a/m", first.adapter.outcome)])  # type: ignore[attr-defined]
    assert first.health == Health(failures=1, last_error=f"provider answered {status}: no")


@pytest.mark.asyncio
async def test_every_deployment_refused_is_not_retryable() -> None:
    causes = [refused(401), refused(403), refused(404)]
    error = await failed([dep("a/m", causes[0]), dep("b/m", causes[1]), dep("c/m", causes[2])], new_record())
    assert (type(error), error.status, error.openai_type, error.anthropic_type, error.code, error.should_retry,
            error.message) == (
        AllAttemptsFailedError, 502, "api_error", "api_error", "all_deployments_rejected", False,
        "All 3 attempt(s) failed: a/m: provider answered 401: no; b/m: provider answered 403: no; "
        "c/m: provider answered 404: no")


@pytest.mark.asyncio
async def test_refused_and_skipped_is_still_not_retryable() -> None:
    skipped = dep("a/m", REPLY, endpoints=frozenset({"embeddings"}))
    error = await failed([skipped, dep("b/m", refused(401))], new_record())
    assert (type(error), error.status, error.code, error.should_retry) == (
        AllAttemptsFailedError, 502, "all_deployments_rejected", False)


@pytest.mark.asyncio
@pytest.mark.parametrize("other", [
    UpstreamStatusError("503", upstream_status=503), UpstreamConnectionError("refused"),
    UpstreamTimeoutError("t"), UpstreamRateLimitError("slow down")])
async def test_refused_and_a_transient_failure_may_be_retried(other: LabgateError) -> None:
    error = await failed([dep("a/m", refused(401)), dep("b/m", other)], new_record())
    assert (type(error), error.status, error.code, error.should_retry) == (
        AllAttemptsFailedError, 502, "all_attempts_failed", True)


@pytest.mark.asyncio
async def test_a_busy_deployment_is_not_a_circuit_failure() -> None:
    """Issue 17 item 7: every pooled connection in use is "busy", never "failing"."""
    busy = dep("a/m", DeploymentBusyError("provider 'a' is busy"))
    second = dep("b/m", Reply(b"{}"))
    record = new_record()
    _, used = await run([busy, second], record)
    assert (used, busy.health, second.health) == (second, Health(), Health())
    assert record.failures == [AttemptFailure("a/m", busy.adapter.outcome)]  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_every_deployment_busy_is_a_503_with_retry_after() -> None:
    candidates = [dep("a/m", DeploymentBusyError("a busy")), dep("b/m", DeploymentBusyError("b busy"))]
    error = await failed(candidates, new_record())
    assert (type(error), error.status, error.retry_after, [d.health for d in candidates]) == (  # type: ignore[attr-defined]
        AllAttemptsFailedError, 503, 1.0, [Health(), Health()])


@pytest.mark.asyncio
async def test_a_full_gate_is_passed_over_without_an_attempt_and_without_a_queue() -> None:
    full = dep("a/m", Reply(b"{}"))
    full.gate = Gate(1, max_queue=0)
    assert full.gate.try_acquire()
    second = dep("b/m", Reply(b"{}"))
    record = new_record()
    _, used = await run([full, second], record)
    assert (used, calls(full), record.attempts, full.gate.inflight) == (second, [], 1, 1)
    assert record.spill is None  # full, not spilled from: no x-labgate-spill


@pytest.mark.asyncio
async def test_only_full_gates_and_no_queue_is_all_busy() -> None:
    full = dep("a/m", Reply(b"{}"))
    full.gate = Gate(1, max_queue=0)
    full.gate.try_acquire()
    error = await failed([full], new_record())
    assert (error.status, error.code, error.failures[0].error.code) == (  # type: ignore[attr-defined]
        503, "all_attempts_failed", "deployment_busy")


@pytest.mark.asyncio
async def test_a_failed_attempt_gives_its_gate_slot_back() -> None:
    broken = dep("a/m", UpstreamStatusError("upstream answered 503", upstream_status=503))
    broken.gate = Gate(2, max_queue=0)
    ok = dep("b/m", Reply(b"{}"))
    ok.gate = Gate(2, max_queue=0)
    await run([broken, ok], new_record())
    assert (broken.gate.inflight, ok.gate.inflight, broken.health.inflight, ok.health.inflight) == (0, 0, 0, 0)


@pytest.mark.asyncio
async def test_a_half_open_deployment_probed_by_another_request_is_passed_over() -> None:
    probing = dep("a/m", Reply(b"{}"))
    probing.health.failures, probing.health.open_until = 3, time.monotonic() - 1
    other = dep("b/m", Reply(b"{}"))
    first, second = new_record(), new_record()
    assert (await run([probing, other], first))[1] is probing  # the probe
    probing.health.failures, probing.health.open_until = 3, time.monotonic() - 1
    CIRCUIT.claim(probing.health, time.monotonic())  # another request holds the probe now
    assert (await run([probing, other], second))[1] is other
    assert (len(calls(probing)), second.attempts, second.failures[0].error.code) == (
        1, 1, "no_healthy_deployment")


class HandOver:
    """A queue whose first waiter gets the slot at once, as from a request that just ended; keeps what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[list[str], RequestRecord, float]] = []

    async def wait(self, busy: list[Deployment], record: RequestRecord, deadline: float) -> Deployment:
        self.asked.append(([d.key for d in busy], record, deadline))
        return busy[0]  # the slot handed over: the gate's count stays


@pytest.mark.asyncio
async def test_a_full_deployment_answers_through_the_queue_with_the_request_as_sent() -> None:
    full = dep("a/m1", REPLY, timeout=5.0)
    full.gate = Gate(1, max_queue=4)
    assert full.gate.try_acquire()  # another request holds its one slot
    failing = dep("b/m2", UpstreamStatusError("upstream answered 503", upstream_status=503))
    native = {"model": "public", "max_tokens": 5, "messages": []}
    record, queue, deadline = new_record(), HandOver(), time.monotonic() + 600
    record.routing = "local"  # local_first planned a local deployment (b); a cloud one answers
    limits = Limits(over="none")  # both providers limited, neither over: each attempt takes its share
    result = await attempt([full, failing], endpoint="chat", body=BODY, stream=False, deadline=deadline,
                           circuit=CIRCUIT, record=record, native=native, queue=queue,
                           limits=limits)  # type: ignore[arg-type]
    assert result == (REPLY, full)
    assert calls(full) == [("send", Call("chat", BODY, "m1", 5.0, "req-1", native, b""))]
    assert queue.asked == [(["a/m1"], record, deadline)]
    assert limits.log == [("take", "b/m2"), ("give back", "held b/m2", True), ("take", "a/m1"), ("keep", "held a/m1")]
    assert (record.attempts, record.deployment, record.routing, full.gate.inflight) == (
        2, "a/m1", "cloud (local failing)", 0)


@pytest.mark.asyncio
async def test_a_deployment_over_prefer_local_under_is_tried_last_under_its_hard_limit_without_queueing() -> None:
    local = dep("a/m1", REPLY)
    local.gate = Gate(2, max_queue=4, spill_at=1)
    assert local.gate.try_acquire()  # at prefer_local_under, under its hard limit
    failing = dep("b/m2", UpstreamConnectionError("refused"))
    record, queue = new_record(), HandOver()
    seen: list[str | None] = []
    original = failing.adapter.send

    async def send(call: Call) -> Reply:
        seen.append(record.spill)  # while b is tried, the spill says why a was passed over
        return await original(call)

    failing.adapter.send = send  # type: ignore[attr-defined]
    result = await attempt([local, failing], endpoint="chat", body=BODY, stream=False, circuit=CIRCUIT,
                           deadline=time.monotonic() + 600, record=record, queue=queue)  # type: ignore[arg-type]
    assert result == (REPLY, local)
    assert (seen, record.spill, queue.asked, local.gate.inflight) == (
        ["a/m1 at 1/2 in flight (prefer_local_under)"], None, [], 1)


class Limits:
    """Provider limits on every provider but ``free``: ``over`` is over its limit; keeps what it was asked."""

    def __init__(self, over: str) -> None:
        self.providers, self.over, self.log = {"a": None, "b": None, "c": None}, over, []  # type: ignore[var-annotated]

    async def take_provider(self, record: RequestRecord, d: Deployment) -> object:
        if d.provider == self.over:
            return ProviderLimitedError(f"{d.provider} is over its rpm", budget=False, retry_after=5.0)
        self.log.append(("take", d.key))
        return f"held {d.key}"

    def give_back(self, held: object, *, sent: bool) -> None:
        self.log.append(("give back", held, sent))

    def keep(self, record: RequestRecord, held: object) -> None:
        self.log.append(("keep", held))


@pytest.mark.asyncio
async def test_limited_providers_are_sent_the_same_request_and_settle_what_each_attempt_took() -> None:
    over, failing, answering = (dep("a/m1", REPLY), dep("b/m2", UpstreamConnectionError("refused"), timeout=5.0),
                                dep("c/m3", REPLY, timeout=5.0))
    native = {"model": "public", "max_tokens": 5, "messages": []}
    record, limits = new_record(), Limits(over="a")
    result = await attempt([over, failing, answering], endpoint="chat", body=BODY, stream=False, circuit=CIRCUIT,
                           deadline=time.monotonic() + 600, record=record, native=native,
                           limits=limits, max_attempts=2)  # type: ignore[arg-type]
    assert result == (REPLY, answering)  # a, passed over for its limit, used none of the two attempts
    assert [calls(d) for d in (over, failing, answering)] == [
        [], [("send", Call("chat", BODY, "m2", 5.0, "req-1", native, b""))],
        [("send", Call("chat", BODY, "m3", 5.0, "req-1", native, b""))]]
    assert limits.log == [("take", "b/m2"), ("give back", "held b/m2", True), ("take", "c/m3"), ("keep", "held c/m3")]
    assert [(f.deployment, type(f.error)) for f in record.failures] == [
        ("a/m1", ProviderLimitedError), ("b/m2", UpstreamConnectionError)]


@pytest.mark.asyncio
async def test_a_paced_stream_without_a_first_token_in_time_fails_its_attempt() -> None:
    async def never() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()  # an upstream that never sends a token
        yield b""

    async def answer() -> AsyncIterator[bytes]:
        yield b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'

    silent, answering = dep("a/m1", IteratorStream(never())), dep("b/m2", IteratorStream(answer()))
    record = RequestRecord("req-1", "chat", model="public")
    pace = Pace(default=Timeouts(), routes={"public": Timeouts(first_token=0.05)})  # this model's own deadline
    stream, used = await attempt([silent, answering], endpoint="chat", body=BODY, stream=True, circuit=CIRCUIT,
                                 deadline=time.monotonic() + 600, record=record, pace=pace)  # type: ignore[arg-type]
    assert used is answering
    assert [chunk async for chunk in stream] == [b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n']
    [failure] = record.failures
    assert (failure.deployment, type(failure.error), failure.error.message) == (
        "a/m1", UpstreamTimeoutError, "a/m1 sent no token within 0.05 s (ttft_timeout_s)")


@pytest.mark.asyncio
async def test_a_request_refused_by_its_upstream_gives_its_provider_limit_back_as_sent() -> None:
    rejected = UpstreamRejectedError("context length exceeded", status=400, param="messages")
    first, second, limits = dep("a/m1", rejected), dep("b/m2", REPLY), Limits(over="none")
    with pytest.raises(UpstreamRejectedError):
        await attempt([first, second], endpoint="chat", body=BODY, stream=False, circuit=CIRCUIT,
                      deadline=time.monotonic() + 600, record=new_record(), limits=limits)  # type: ignore[arg-type]
    assert (limits.log, calls(second)) == ([("take", "a/m1"), ("give back", "held a/m1", True)], [])


def silent_then_answering() -> tuple[Deployment, Deployment]:
    """A deployment whose stream never sends a token, and a half-open one that answers (its probe)."""
    async def never() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""

    async def answer() -> AsyncIterator[bytes]:
        yield b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'

    silent = dep("a/m1", IteratorStream(never()), timeout=10_000.0)
    answering = dep("b/m2", IteratorStream(answer()), timeout=10_000.0)
    answering.health.failures, answering.health.open_until = 3, time.monotonic() - 1  # cooled down: probed now
    answering.health.last_error = "earlier"
    return silent, answering


@pytest.mark.asyncio
@pytest.mark.parametrize("queued", [False, True], ids=["first pass", "through the queue"])
@pytest.mark.parametrize("limited", [False, True], ids=["no provider limits", "provider limits"])
async def test_every_path_sends_the_call_as_asked_and_paces_it(queued: bool, limited: bool) -> None:
    """Whichever way an attempt goes (first pass or handed a slot by the queue, with provider limits or
    without), it sends the client's call (native body, stream, at most the time left), paces the stream
    (the first token in time) and probes a cooled-down circuit."""
    native = {"model": "public", "max_tokens": 5, "messages": []}
    silent, answering = silent_then_answering()
    queue = HandOver() if queued else None
    if queued:
        for d in (silent, answering):  # both full: each answers through the queue, in turn
            d.gate = Gate(1, max_queue=4)
            assert d.gate.try_acquire()
    limits = Limits(over="none") if limited else None
    record = RequestRecord("req-1", "chat", model="public")
    pace, deadline = Pace(default=Timeouts(), routes={"public": Timeouts(first_token=0.05)}), time.monotonic() + 600
    stream, used = await attempt([silent, answering], endpoint="chat", body=BODY, stream=True, circuit=CIRCUIT,
                                 deadline=deadline, record=record, native=native, queue=queue,
                                 limits=limits, pace=pace)  # type: ignore[arg-type]
    assert used is answering
    assert [chunk async for chunk in stream] == [b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n']
    sent = [(kind, call._replace(timeout=0.0)) for d in (silent, answering) for kind, call in calls(d)]
    assert sent == [("stream", Call("chat", BODY, "m1", 0.0, "req-1", native, b"")),
                    ("stream", Call("chat", BODY, "m2", 0.0, "req-1", native, b""))]
    assert all(0 < call.timeout <= 600 for d in (silent, answering) for _, call in calls(d))  # the time left
    assert [(f.deployment, type(f.error), f.error.message) for f in record.failures] == [
        ("a/m1", UpstreamTimeoutError, "a/m1 sent no token within 0.05 s (ttft_timeout_s)")]
    assert answering.health == Health(inflight=1, last_error="earlier")  # the probe answered: closed again
    assert record.routing is None  # not a local_first route: no x-labgate-routing
    assert queue is None or queue.asked == [(["a/m1", "b/m2"], record, deadline), (["b/m2"], record, deadline)]
    assert limits is None or limits.log == [
        ("take", "a/m1"), ("give back", "held a/m1", True), ("take", "b/m2"), ("keep", "held b/m2")]
    await stream.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("limited", [False, True], ids=["no provider limits", "provider limits"])
async def test_a_deployment_whose_probe_another_request_holds_gives_back_its_slot_and_its_limit(limited: bool) -> None:
    probing = dep("a/m1", REPLY)
    probing.gate = Gate(1, max_queue=0)
    probing.health.failures, probing.health.open_until = 3, time.monotonic() - 1
    CIRCUIT.claim(probing.health, time.monotonic())  # another request is probing it
    limits = Limits(over="none") if limited else None
    record = new_record()
    error = await failed_with([probing], record, limits=limits)
    [failure] = error.failures  # type: ignore[attr-defined]
    assert (failure.deployment, type(failure.error), failure.error.message, failure.error.retry_after) == (
        "a/m1", NoHealthyDeploymentError, "a/m1 is cooling down: another request is probing it", 1.0)
    assert (error.status, error.retry_after, calls(probing), record.attempts, probing.gate.inflight) == (  # type: ignore[attr-defined]
        503, 1.0, [], 0, 0)
    assert limits is None or limits.log == [("take", "a/m1"), ("give back", "held a/m1", False)]  # never sent


class Replicas:
    """Leases in Redis without Redis: ``held`` slots of the engine taken across replicas; the limits asked."""

    def __init__(self, held: int) -> None:
        self.held, self.asked = held, []  # type: ignore[var-annotated]

    async def take(self, limit: float) -> bool:
        self.asked.append(limit)
        if self.held < limit:
            self.held += 1
            return True
        return False

    def give_back(self) -> None:
        self.held -= 1


def shared(key: str, outcome: Reply | BaseException, *, limit: int, spill_at: float | None,
           held: int) -> tuple[Deployment, Replicas]:
    """A deployment whose gate is counted across replicas, ``held`` of its slots taken by the others."""
    d, replicas = dep(key, outcome), Replicas(held)
    d.gate = Gate(limit, max_queue=4, spill_at=spill_at)
    d.gate.shared = replicas  # type: ignore[assignment]
    return d, replicas


@pytest.mark.asyncio
async def test_a_shared_deployment_over_prefer_local_under_across_replicas_spills_to_the_next() -> None:
    local, replicas = shared("a/m1", REPLY, limit=2, spill_at=1, held=1)
    cloud, record = dep("b/m2", REPLY), new_record()
    assert await attempt([local, cloud], endpoint="chat", body=BODY, stream=False, circuit=CIRCUIT,
                         deadline=time.monotonic() + 600, record=record, queue=HandOver()) == (REPLY, cloud)  # type: ignore[arg-type]
    assert (record.spill, replicas.asked, replicas.held, local.gate.inflight, calls(local)) == (  # type: ignore[union-attr]
        "a/m1 at or over prefer_local_under of 2 across replicas", [1], 1, 0, [])


@pytest.mark.asyncio
async def test_a_shared_deployment_is_tried_last_under_its_hard_limit_across_replicas() -> None:
    local, replicas = shared("a/m1", REPLY, limit=2, spill_at=1, held=1)
    failing, record, queue = dep("b/m2", UpstreamConnectionError("refused")), new_record(), HandOver()
    assert await attempt([local, failing], endpoint="chat", body=BODY, stream=False, circuit=CIRCUIT,
                         deadline=time.monotonic() + 600, record=record, queue=queue) == (REPLY, local)  # type: ignore[arg-type]
    # asked against spill_at first, then against the hard limit; the lease given back with the reply
    assert (record.spill, replicas.asked, replicas.held, local.gate.inflight, queue.asked) == (  # type: ignore[union-attr]
        None, [1, 2], 1, 0, [])


@pytest.mark.asyncio
@pytest.mark.parametrize(("spill_at", "waiting"), [(None, 0), (1, 1)],
                         ids=["full across replicas", "a request already waits here"])
async def test_a_shared_deployment_full_or_with_a_line_is_no_spill(spill_at: float | None, waiting: int) -> None:
    """Full (no ``prefer_local_under``) or with a request of this replica already in its line, a shared
    deployment is busy, not spilled from: no ``x-labgate-spill``."""
    local, _ = shared("a/m1", REPLY, limit=2, spill_at=spill_at, held=2 - waiting)
    line = [Waiter(0, [local.gate]) for _ in range(waiting)]  # type: ignore[list-item]
    cloud, record = dep("b/m2", REPLY), new_record()
    assert await attempt([local, cloud], endpoint="chat", body=BODY, stream=False, circuit=CIRCUIT,
                         deadline=time.monotonic() + 600, record=record) == (REPLY, cloud)  # type: ignore[arg-type]
    assert (record.spill, calls(local)) == (None, [])
    for waiter in line:
        waiter.leave()


@pytest.mark.asyncio
async def test_each_attempt_is_a_span_of_the_trace_and_sends_its_traceparent() -> None:
    busy, failing = dep("a/m1", DeploymentBusyError("a busy")), dep("b/m2", UpstreamConnectionError("refused"))
    ok, record = dep("c/m3", REPLY), new_record()
    record.trace = Trace(0xABC, 0x99, None, True, None)
    assert await run([busy, failing, ok], record) == (REPLY, ok)
    spans = record.trace.attempts
    assert [(deployment, code, message) for _, deployment, _, _, code, message in spans] == [
        ("a/m1", "deployment_busy", "a busy"), ("b/m2", "upstream_connection_error", "refused"),
        ("c/m3", None, None)]
    assert [call.headers for d in (busy, failing, ok) for _, call in calls(d)] == [
        f"traceparent: 00-{0xABC:032x}-{span[0]:016x}-01\r\n".encode() for span in spans]


@pytest.mark.asyncio
async def test_an_attempt_that_raises_unexpectedly_ends_its_span_with_the_error() -> None:
    crashing, record = dep("a/m1", RuntimeError("bug")), new_record()
    record.trace = Trace(0xABC, 0x99, None, True, None)
    with pytest.raises(RuntimeError):
        await run([crashing], record)
    assert [(deployment, code, message) for _, deployment, _, _, code, message in record.trace.attempts] == [
        ("a/m1", "RuntimeError", "bug")]


@pytest.mark.asyncio
async def test_max_attempts_bounds_the_candidates_tried() -> None:
    candidates = [dep("a/m1", UpstreamConnectionError("refused")), dep("b/m2", UpstreamTimeoutError("t")),
                  dep("c/m3", REPLY)]
    record = new_record()
    error = await failed_with(candidates, record, max_attempts=2)
    assert (type(error), error.message, calls(candidates[2]), record.attempts) == (
        AllAttemptsFailedError, "All 2 attempt(s) failed: a/m1: refused; b/m2: t", [], 2)


@pytest.mark.asyncio
async def test_a_provider_passed_over_for_its_limit_gives_back_one_attempt_only() -> None:
    candidates = [dep("a/m1", REPLY), dep("b/m2", UpstreamConnectionError("refused")), dep("c/m3", REPLY)]
    record = new_record()
    error = await failed_with(candidates, record, limits=Limits(over="a"), max_attempts=1)
    assert (type(error), [(f.deployment, type(f.error)) for f in record.failures], calls(candidates[2])) == (
        AllAttemptsFailedError, [("a/m1", ProviderLimitedError), ("b/m2", UpstreamConnectionError)], [])


def test_planned_is_max_attempts_unless_a_provider_has_limits() -> None:
    """With provider limits a candidate passed over for them uses no attempt: the plan must hold them all."""
    none = Limits(over="none")
    none.providers = {}
    assert (planned(2, None), planned(2, none), planned(2, Limits(over="none"))) == (2, 2, UNCAPPED)


@pytest.mark.asyncio
async def test_a_limiter_without_provider_limits_takes_nothing() -> None:
    limits, first, record = Limits(over="none"), dep("a/m1", REPLY), new_record()
    limits.providers = {}  # rate limits on keys only
    assert await attempt([first], endpoint="chat", body=BODY, stream=False, circuit=CIRCUIT, record=record,
                         deadline=time.monotonic() + 600, limits=limits) == (REPLY, first)  # type: ignore[arg-type]
    assert limits.log == []


@pytest.mark.asyncio
async def test_an_attempt_counts_itself_beside_the_streams_already_in_flight() -> None:
    """``health.inflight`` (the balancer's load, the admin view) counts this attempt with the others."""
    d = dep("a/m1", REPLY)
    d.health.inflight = 2  # two streams relayed from it now
    seen: list[int] = []
    original = d.adapter.send

    async def send(call: Call) -> Reply:
        seen.append(d.health.inflight)
        return await original(call)

    d.adapter.send = send  # type: ignore[attr-defined]
    await run([d], new_record())
    assert (seen, d.health.inflight) == ([3], 2)


class Clock:
    """``time.monotonic`` as the attempt loop reads it, held still and moved by hand (at a deadline exactly)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The loop's clock only (``attempts.time``): the event loop and everything else keep the real one."""
    held = Clock()
    monkeypatch.setattr(attempts, "time", held)
    return held


def out_of_time(record: RequestRecord) -> list[tuple[str, type, str]]:
    return [(f.deployment, type(f.error), f.error.message) for f in record.failures]


@pytest.mark.asyncio
async def test_an_attempt_at_the_deadline_is_not_made_and_gives_its_slot_back(clock: Clock) -> None:
    first, record = dep("a/m1", REPLY), new_record()
    first.gate = Gate(1, max_queue=0)
    error = await failed_with([first, dep("b/m2", REPLY)], record, deadline=clock.now)
    assert (type(error), error.status, calls(first), record.attempts, first.gate.inflight) == (
        AllAttemptsFailedError, 504, [], 0, 0)
    assert out_of_time(record) == [
        ("a/m1", UpstreamTimeoutError, "the request's total deadline passed before this attempt")]


class LateHandOver(HandOver):
    """A queue that hands the slot over when the request's deadline has come."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    async def wait(self, busy: list[Deployment], record: RequestRecord, deadline: float) -> Deployment:
        self.clock.now = deadline
        return await super().wait(busy, record, deadline)


@pytest.mark.asyncio
async def test_a_slot_handed_over_at_the_deadline_is_given_back_unused(clock: Clock) -> None:
    full, other = dep("a/m1", REPLY), dep("b/m2", REPLY)
    for d in (full, other):
        d.gate = Gate(1, max_queue=4)
        assert d.gate.try_acquire()  # other requests hold their one slot
    record, queue = new_record(), LateHandOver(clock)
    error = await failed_with([full, other], record, queue=queue, deadline=clock.now + 10)
    assert (type(error), error.status, calls(full), record.attempts, full.gate.inflight, len(queue.asked)) == (
        AllAttemptsFailedError, 502, [], 0, 0, 1)
    assert out_of_time(record) == [
        ("a/m1", UpstreamTimeoutError, "the request's total deadline passed before this attempt"),
        ("b/m2", DeploymentBusyError, "provider 'b' is at its max_parallel_requests")]


@pytest.mark.asyncio
async def test_no_queue_wait_once_the_first_pass_used_the_time(clock: Clock) -> None:
    full = dep("a/m1", REPLY)
    full.gate = Gate(1, max_queue=4)
    assert full.gate.try_acquire()
    slow, record, queue = dep("b/m2", UpstreamTimeoutError("t")), new_record(), HandOver()
    original = slow.adapter.send

    async def send(call: Call) -> Reply:
        clock.now += call.timeout  # the attempt used the rest of the time
        return await original(call)

    slow.adapter.send = send  # type: ignore[attr-defined]
    error = await failed_with([full, slow], record, queue=queue, deadline=clock.now + 10)
    assert (type(error), queue.asked, calls(full)) == (AllAttemptsFailedError, [], [])
    assert out_of_time(record) == [("b/m2", UpstreamTimeoutError, "t"),
                                   ("a/m1", DeploymentBusyError, "provider 'a' is at its max_parallel_requests")]
