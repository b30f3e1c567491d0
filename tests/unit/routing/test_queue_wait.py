"""The line, one request at a time: how ``Queue.wait`` queues, hands over, refuses and times out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labgate.config.schema.queue import QueueConfig
from labgate.errors import OverCapacityError, RequestError
from labgate.keys import VirtualKey
from labgate.record import RequestRecord
from labgate.routing import queue as queue_module
from labgate.routing.gate import Gate
from labgate.routing.queue import Queue
from labgate.routing.table import Deployment

pytestmark = pytest.mark.asyncio
HANG = 10.0  # a wait this long is a hang: the test fails instead of waiting for it


def deployment(gate: Gate | None, name: str = "p") -> Deployment:
    return Deployment(f"{name}/m", name, "m", adapter=None, timeout=60.0, gate=gate)  # type: ignore[arg-type]


def full(limit: int = 1, max_queue: int = 4) -> Gate:
    gate = Gate(limit, max_queue=max_queue)
    while gate.try_acquire():
        pass
    return gate


def queue(**config: Any) -> Queue:
    return Queue.of(QueueConfig.model_validate({"timeout_s": 30, **config}))


def record(model: str = "m", priority: str | None = None) -> RequestRecord:
    return RequestRecord("r", "chat", model=model, priority=priority)


class Clock:
    """``time`` for the queue module: ``monotonic`` reads the given instants in turn."""

    def __init__(self, *instants: float) -> None:
        self._instants: Iterator[float] = iter(instants)
        self.perf_counter = time.perf_counter

    def monotonic(self) -> float:
        return next(self._instants)


async def test_of_reads_every_setting() -> None:
    config = QueueConfig.model_validate({
        "timeout_s": 7, "overflow_status": 429, "retry_after_s": 3, "default_priority": "low",
        "routes": {"r": "high"}, "projects": {"p": "critical"}, "teams": {"t": "normal"}})
    assert Queue.of(config) == Queue(7, 429, 3, 3, {"r": 1}, {"p": 0}, {"t": 2})


async def test_a_project_alone_tags_a_key_and_a_bad_header_is_named_in_full() -> None:
    only_projects = queue(projects={"oncall": "critical"})
    tagged = record()
    tagged.api_key = VirtualKey("k", "key", "abcd", project="oncall")
    assert only_projects.priority(tagged) == 0
    with pytest.raises(RequestError) as refused:
        only_projects.priority(record(priority="x" * 50))
    assert refused.value.message == ("The x-labgate-priority header must be one of critical, high, normal, low; "
                                     f"got {'x' * 40!r}.")


async def test_a_slot_goes_to_the_higher_priority_and_the_wait_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = full()
    dep = deployment(gate)
    line = queue()
    low, critical = record(priority="low"), record(priority="critical")
    monkeypatch.setattr(queue_module, "time", Clock(100.0, 200.0, 200.2501234, 100.5))
    first = asyncio.create_task(line.wait([dep], low, 1e9))  # started 100.0, queued first
    await asyncio.sleep(0)
    second = asyncio.create_task(line.wait([dep], critical, 1e9))  # started 200.0
    await asyncio.sleep(0)
    assert gate.waiting == 2
    gate.release()
    assert await asyncio.wait_for(second, HANG) is dep  # done at 200.2501234
    assert (first.done(), critical.queue_ms) == (False, 250.123)
    start, end = critical.queue_wait  # type: ignore[misc]
    assert start <= end
    gate.release()
    assert await asyncio.wait_for(first, HANG) is dep
    assert (low.queue_ms, gate.inflight, gate.waiting) == (500.0, 1, 0)


async def test_a_full_line_is_refused_with_the_configured_status_and_retry_after() -> None:
    gate = full(max_queue=0)
    with pytest.raises(OverCapacityError) as refused:
        await queue(overflow_status=429, retry_after_s=7).wait([deployment(gate)], record(), 1e9)
    error = refused.value
    assert (error.code, error.status, error.retry_after) == ("queue_full", 429, 7)
    assert error.message == "Every deployment for model 'm' is at capacity and its queue is full; retry later."


async def test_a_wait_that_runs_out_is_a_503_that_says_how_long(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = full()
    monkeypatch.setattr(queue_module, "time", Clock(100.0, 100.0 + 2.04))
    with pytest.raises(OverCapacityError) as refused:
        await asyncio.wait_for(queue(timeout_s=0.01, retry_after_s=4).wait([deployment(gate)], record(), 1e9), HANG)
    error = refused.value
    assert (error.code, error.status, error.retry_after) == ("queue_timeout", 503, 4)
    assert error.message == "No deployment for model 'm' had capacity within 2.0 s of waiting; retry later."
    assert (gate.waiting, gate.inflight) == (0, 1)  # it left the line; the holder keeps its slot


async def test_a_deadline_already_past_times_out_before_a_slot_frees() -> None:
    gate = full()
    asyncio.get_running_loop().call_later(0.2, gate.release)  # later than a timeout of 0, earlier than 1 s
    with pytest.raises(OverCapacityError, match="had capacity"):
        await asyncio.wait_for(queue().wait([deployment(gate)], record(), time.monotonic() - 5), HANG)


async def test_the_request_deadline_bounds_the_wait_below_the_queue_timeout() -> None:
    gate = full()
    with pytest.raises(OverCapacityError, match="had capacity"):  # timeout_s 30, deadline in 0.05 s
        await asyncio.wait_for(queue().wait([deployment(gate)], record(), time.monotonic() + 0.05), HANG)


async def test_a_client_that_leaves_as_the_slot_is_handed_over_passes_it_on() -> None:
    gate = full()
    waiting = asyncio.create_task(queue().wait([deployment(gate)], record(), 1e9))
    await asyncio.sleep(0)
    gate.release()  # handed to the waiter, which has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (gate.inflight, gate.waiting) == (0, 0)


async def test_a_closed_gate_fails_the_request_at_once_a_gateless_candidate_does_not() -> None:
    closed = full()
    error = RuntimeError("draining")
    closed.close(error)
    busy = [deployment(None, "nogate"), deployment(full(), "open"), deployment(closed, "closed")]
    with pytest.raises(RuntimeError, match="draining"):
        await asyncio.wait_for(queue().wait(busy, record(), 1e9), HANG)
    open_gate = full()
    waiting = asyncio.create_task(queue().wait([deployment(None, "nogate"), deployment(open_gate)], record(), 1e9))
    await asyncio.sleep(0)
    open_gate.release()
    assert (await asyncio.wait_for(waiting, HANG)).gate is open_gate


async def test_a_shared_gate_is_watched_while_a_request_waits_there() -> None:
    watched: list[Gate] = []

    class Leases:
        def watch(self, gate: Gate) -> None:
            watched.append(gate)

    gate = full()
    gate.shared = Leases()  # type: ignore[assignment]
    waiting = asyncio.create_task(queue().wait([deployment(gate)], record(), 1e9))
    await asyncio.sleep(0)
    assert watched == [gate]
    gate.shared = None
    gate.release()
    await asyncio.wait_for(waiting, HANG)
