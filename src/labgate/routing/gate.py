"""Capacity of one deployment: at most ``limit`` requests in flight, and the line of those waiting.

A slot is a lease. The attempt loop takes it (:meth:`Gate.try_acquire`, or a
hand-over from the line) and it is given back in exactly one place
(:meth:`labgate.routing.table.Deployment.release`: the attempt loop for a
whole reply or a failed attempt, the relay's end for a stream). A release
hands the slot straight to the best waiter (highest priority, then the
earliest), so a queued request is never overtaken by one that arrives later
and a slot is never free while someone waits for it.

A :class:`Waiter` may stand in the line of several gates at once (every busy
candidate of its route): the first gate to free a slot takes it; its entries
in the other lines are skipped when they come up (``waiting`` counts only
live ones, kept exact by :meth:`Waiter.leave`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labgate.routing.leases import Leases

_SLACK = 64  # dead line entries tolerated beyond twice the live ones before a gate's line is compacted
_order = itertools.count()  # global arrival order: FIFO within a priority, across every gate


class Waiter:
    """One queued request: its priority (0 is served first), its arrival, and the gates it waits at."""

    __slots__ = ("future", "gates", "priority", "seq")

    def __init__(self, priority: int, gates: list[Gate]) -> None:
        self.future: asyncio.Future[Gate] = asyncio.get_running_loop().create_future()
        self.priority = priority
        self.seq = next(_order)
        self.gates = gates
        for gate in gates:
            gate.waiting += 1
            heapq.heappush(gate.line, (priority, self.seq, self))

    def leave(self) -> Gate | None:
        """Step out of every line; returns the gate whose slot was handed over, if one was."""
        for gate in self.gates:
            gate.waiting -= 1
            if len(gate.line) > 2 * gate.waiting + _SLACK:  # entries of waiters that left: bounded
                gate.line = [entry for entry in gate.line if not entry[2].future.done() and entry[2] is not self]
                heapq.heapify(gate.line)
        future = self.future
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()
        future.cancel()  # a gate that reaches this entry later skips it
        return None


class Gate:
    """At most ``limit`` requests in flight on one deployment; at most ``max_queue`` waiting for it."""

    __slots__ = ("closed", "inflight", "limit", "line", "max_queue", "shared", "spill_at", "waiting")

    def __init__(self, limit: int, *, max_queue: int, spill_at: float | None = None) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.spill_at = limit if spill_at is None else spill_at  # prefer_local_under × limit
        self.inflight = 0
        self.waiting = 0  # live waiters in ``line``
        self.closed: BaseException | None = None  # set by close(): what a request that would queue gets
        self.line: list[tuple[int, int, Waiter]] = []  # a heap: (priority, arrival, waiter)
        self.shared: Leases | None = None  # with state.url: each slot also holds a lease in Redis (leases.py)

    @property
    def load(self) -> float:
        """In-flight requests as a fraction of the limit (1.0: full)."""
        return self.inflight / self.limit

    def try_prefer(self) -> bool:
        """Take a slot only while under ``spill_at`` (prefer_local_under): the first pass over candidates."""
        if self.inflight < self.spill_at and self.inflight < self.limit:
            self.inflight += 1
            return True
        return False

    def try_acquire(self) -> bool:
        """Take a slot if one is free (never waits). A free slot means nobody live is waiting."""
        if self.inflight < self.limit:
            self.inflight += 1
            return True
        return False

    async def take_shared(self, *, prefer: bool) -> bool:
        """With :attr:`shared`: a local slot (as :meth:`try_prefer` or :meth:`try_acquire`) and a lease
        in Redis, counted across replicas. Never ahead of a request already waiting here."""
        if self.waiting or not (self.try_prefer() if prefer else self.try_acquire()):
            return False
        if await self.shared.take(self.spill_at if prefer else self.limit):  # type: ignore[union-attr]
            return True
        self.inflight -= 1  # the engine is full across replicas: the local slot was never used
        return False

    def release(self) -> None:
        """Give a slot back: to the best live waiter (the slot passes on), else free it."""
        line = self.line
        while line:
            waiter = heapq.heappop(line)[2]
            if not waiter.future.done():
                waiter.future.set_result(self)  # the slot (and its lease, if shared) passes on
                return
        self.inflight -= 1
        if self.shared is not None:
            self.shared.give_back()

    def close(self, error: BaseException) -> None:
        """Shutdown: every waiter gets ``error`` now, and so does anyone who would queue later.

        Requests in flight keep their slots and finish.
        """
        self.closed = error
        for _, _, waiter in self.line:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self.line = []

    def room(self) -> bool:
        """May one more request wait in this gate's line?"""
        return self.waiting < self.max_queue
