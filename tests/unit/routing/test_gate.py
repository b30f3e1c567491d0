"""The gate: a slot per request in flight, handed over to the best waiter, never over the limit."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.routing.gate import Gate, Waiter


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
