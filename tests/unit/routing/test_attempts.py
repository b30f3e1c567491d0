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
from labgate.routing.attempts import attempt
from labgate.routing.circuit import Circuit, Health
from labgate.routing.gate import Gate
from labgate.routing.pace import Pace, Timeouts
from labgate.routing.table import Deployment

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
