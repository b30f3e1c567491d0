"""The gate: a slot per request in flight, handed over to the best waiter, never over the limit."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.config.schema.queue import QueueConfig
from labgate.record import RequestRecord
from labgate.routing.gate import Gate, Waiter
from labgate.routing.queue import Queue
from labgate.routing.table import Deployment


@pytest.mark.asyncio
async def test_a_release_hands_the_slot_to_the_best_waiter_then_frees_it() -> None:
    gate = Gate(1, max_queue=8)
    assert (gate.try_acquire(), gate.try_acquire()) == (True, False)
    low, high_first, high_second = Waiter(3, [gate]), Waiter(1, [gate]), Waiter(1, [gate])
    served = []
    for _ in range(3):
        gate.release()
        done = next(w for w in (low, high_first, high_second) if w.future.done() and w not in served)
        served.append(done)
        assert (gate.inflight, done.leave()) == (1, gate)  # the slot passed on: still one in flight
    assert served == [high_first, high_second, low]
    gate.release()
    assert (gate.inflight, gate.waiting, gate.line) == (0, 0, [])


@pytest.mark.asyncio
async def test_a_waiter_at_two_gates_takes_the_first_slot_and_leaves_the_other_line() -> None:
    a, b = Gate(1, max_queue=4), Gate(1, max_queue=4)
    a.try_acquire(), b.try_acquire()
    waiter = Waiter(2, [a, b])
    assert (a.waiting, b.waiting) == (1, 1)
    b.release()
    assert waiter.leave() is b
    assert (a.waiting, b.waiting, b.inflight) == (0, 0, 1)
    a.release()  # the stale entry in a's line is skipped: the slot is freed
    assert (a.inflight, a.line) == (0, [])


@pytest.mark.asyncio
async def test_waiters_that_leave_do_not_pile_up_in_a_stuck_gate() -> None:
    gate = Gate(1, max_queue=1)
    gate.try_acquire()
    for _ in range(10_000):
        assert gate.room()
        Waiter(2, [gate]).leave()
    assert (gate.waiting, len(gate.line) <= 64) == (0, True)


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 4), steps=st.lists(st.tuples(st.sampled_from(["take", "wait", "leave", "done"]),
                                                         st.integers(0, 3)), max_size=60))
def test_never_over_the_limit_and_every_slot_accounted_for(limit: int, steps: list[tuple[str, int]]) -> None:
    async def scenario() -> None:
        gate = Gate(limit, max_queue=100)
        holding = 0  # slots held by "requests"
        waiters: list[Waiter] = []
        for op, priority in steps:
            if op == "take":
                holding += gate.try_acquire()
            elif op == "wait":  # as the attempt loop does: wait only when no slot is free
                if gate.try_acquire():
                    holding += 1
                else:
                    waiters.append(Waiter(priority, [gate]))
            elif op == "leave" and waiters:
                holding += waiters.pop(0).leave() is not None
            elif op == "done" and holding:
                holding -= 1
                gate.release()
            for w in [w for w in waiters if w.future.done()]:  # a handed slot is held from now on
                waiters.remove(w)
                holding += w.leave() is not None
            assert gate.inflight == holding <= limit
            assert gate.waiting == len(waiters)
            assert not waiters or gate.inflight == limit  # nobody waits while a slot is free

    asyncio.run(scenario())


class FakeLeases:
    """Leases without Redis: ``free`` slots across replicas; records what was given back."""

    def __init__(self, free: int) -> None:
        self.free, self.given_back = free, 0

    async def take(self, limit: float) -> bool:
        if self.free:
            self.free -= 1
            return True
        return False

    def give_back(self) -> None:
        self.given_back += 1
        self.free += 1


@pytest.mark.asyncio
async def test_a_shared_gate_needs_a_lease_and_never_overtakes_a_local_waiter() -> None:
    gate = Gate(4, max_queue=8)
    leases = FakeLeases(free=1)
    gate.shared = leases  # type: ignore[assignment]
    assert await gate.take_shared(prefer=False) is True
    assert await gate.take_shared(prefer=False) is False  # a local slot is free, the engine is not
    assert gate.inflight == 1  # the refused local slot was not kept
    waiter = Waiter(2, [gate])
    leases.free = 1  # another replica freed a slot: a newcomer may not take it ahead of the waiter
    assert await gate.take_shared(prefer=False) is False
    gate.release()  # the slot and its lease pass to the waiter, nothing goes back to Redis
    assert (waiter.leave(), gate.inflight, leases.given_back) == (gate, 1, 0)
    gate.release()
    assert (gate.inflight, leases.given_back) == (0, 1)


@pytest.mark.asyncio
async def test_the_first_pass_takes_a_slot_only_under_spill_at_and_never_over_the_limit() -> None:
    gate = Gate(4, max_queue=8, spill_at=2.0)  # prefer_local_under 0.5
    assert [gate.try_prefer() for _ in range(3)] == [True, True, False]
    assert gate.inflight == 2  # the refused pass took nothing
    assert [gate.try_acquire() for _ in range(3)] == [True, True, False]  # the second pass fills it
    assert (gate.try_prefer(), gate.inflight) == (False, 4)
    whole = Gate(3, max_queue=8)  # no prefer_local_under: the first pass may fill the gate
    assert [whole.try_prefer() for _ in range(4)] == [True, True, True, False]
    assert whole.inflight == 3


@pytest.mark.asyncio
async def test_the_line_refuses_a_waiter_past_max_queue() -> None:
    gate = Gate(1, max_queue=2)
    gate.try_acquire()
    waiters = []
    while gate.room():
        waiters.append(Waiter(2, [gate]))
    assert (len(waiters), gate.waiting) == (2, 2)


@pytest.mark.asyncio
async def test_compacting_the_line_keeps_the_live_waiters_and_bounds_the_dead_entries() -> None:
    gate = Gate(1, max_queue=1000)
    gate.try_acquire()
    live = [Waiter(2, [gate]) for _ in range(100)]
    for _ in range(2_000):
        Waiter(1, [gate]).leave()  # ahead of every live one, then gone
        assert len(gate.line) <= 2 * gate.waiting + 64 + 1  # the bound the module states (+1: the next leave's)
    for waiter in live:
        gate.release()  # each slot goes to the earliest live waiter, none is lost in a compaction
        assert (waiter.future.done(), waiter.leave(), gate.inflight) == (True, gate, 1)
    gate.release()
    assert (gate.inflight, gate.waiting) == (0, 0)


@pytest.mark.asyncio
async def test_a_shared_first_pass_asks_redis_against_spill_at_and_gives_a_refused_slot_back() -> None:
    asked: list[float] = []

    class Recording(FakeLeases):
        async def take(self, limit: float) -> bool:
            asked.append(limit)
            return await super().take(limit)

    gate = Gate(4, max_queue=8, spill_at=2.0)
    leases = Recording(free=3)
    gate.shared = leases  # type: ignore[assignment]
    assert await gate.take_shared(prefer=True) is True
    assert await gate.take_shared(prefer=False) is True
    assert await gate.take_shared(prefer=True) is False  # two in flight: not under spill_at, Redis not asked
    assert asked == [2.0, 4]
    assert await gate.take_shared(prefer=False) is True  # the second pass may go past spill_at
    leases.free = 0
    assert await gate.take_shared(prefer=False) is False  # full across replicas
    assert (gate.inflight, asked) == (3, [2.0, 4, 4, 4])  # the local slot of the refused lease went back


@pytest.mark.asyncio
async def test_an_open_gate_queues_a_request_and_a_closed_one_fails_it_and_its_waiters() -> None:
    gate = Gate(1, max_queue=4)
    deployment = Deployment("p/m", "p", "m", adapter=None, timeout=60.0, gate=gate)  # type: ignore[arg-type]
    queue = Queue.of(QueueConfig.model_validate({"timeout_s": 30}))
    assert gate.try_acquire()
    deadline = time.monotonic() + 30
    waiting = asyncio.create_task(queue.wait([deployment], RequestRecord("r", "chat", model="m"), deadline))
    await asyncio.sleep(0)
    assert gate.waiting == 1  # an open gate: the request stands in its line
    gate.release()
    assert await waiting is deployment
    error = RuntimeError("shutting down")
    waiter = Waiter(2, [gate])
    gate.close(error)
    assert (waiter.future.exception(), gate.line, gate.closed) == (error, [], error)
    with pytest.raises(RuntimeError, match="shutting down"):
        await queue.wait([deployment], RequestRecord("r2", "chat", model="m"), deadline)
