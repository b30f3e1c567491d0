"""Micro-batching: inputs of concurrent requests share forward passes, run on a bounded thread pool.

    adapter ─ embed(seqs) ─▶ queue (≤ max_queued inputs; over: 429) ─▶ dispatcher task
        ─ takes ≤ max_batch inputs (waiting ≤ max_wait for more) once a worker is free
        ─▶ executor thread: run(batch) ─▶ rows scattered back to each request's future

Batches form by themselves under load: while every worker is busy, new
requests queue up and leave together in the next pass. With ``max_wait`` 0
an idle engine serves a lone request at once. A request's inputs are sorted
by length before queueing, so a pass pads little; rows go back in the
request's order. A request larger than a pass goes to the back of the
queue after each of its passes, so small requests behind it are not held up
until it is done. A request that goes away (client disconnect) leaves its
inputs behind: they are dropped before a pass, not computed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from labgate.errors import UpstreamRateLimitError, UpstreamStatusError

if TYPE_CHECKING:
    import numpy as np

QUEUE_FULL_RETRY_AFTER_S = 1.0


@dataclass(eq=False, slots=True)
class _Job:
    """One request's inputs (sorted by length) and where their rows go."""

    seqs: list[list[int]]
    order: list[int]  # seqs[i] is the request's input order[i]
    future: asyncio.Future[np.ndarray]
    rows: np.ndarray | None = None
    missing: int = 0
    taken: int = 0  # seqs[:taken] are in a pass or done


@dataclass(slots=True)
class _Pass:
    pieces: list[tuple[_Job, int, int]] = field(default_factory=list)  # job, start, end

    @property
    def seqs(self) -> list[list[int]]:
        return [s for job, start, end in self.pieces for s in job.seqs[start:end]]


class Batcher:
    """Runs ``run(batch) -> [len(batch), dims]`` over the inputs of concurrent :meth:`embed` calls."""

    def __init__(self, run: Callable[[list[list[int]]], np.ndarray], *, executor: Executor, workers: int,
                 max_batch: int, max_wait: float, max_queued: int) -> None:
        self._run = run
        self._executor = executor
        self._max_batch, self._max_wait, self._max_queued = max_batch, max_wait, max_queued
        self._jobs: collections.deque[_Job] = collections.deque()
        self.queued = 0  # inputs waiting, not yet in a pass
        self._free = asyncio.Semaphore(workers)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._passes: set[asyncio.Future[np.ndarray]] = set()

    async def embed(self, seqs: list[list[int]]) -> np.ndarray:
        """Rows for ``seqs``, in order; :class:`UpstreamRateLimitError` when the queue is full."""
        if self.queued + len(seqs) > self._max_queued:
            raise UpstreamRateLimitError(
                f"the local embeddings queue is full ({self.queued} inputs waiting, at most "
                f"{self._max_queued}); retry shortly", retry_after=QUEUE_FULL_RETRY_AFTER_S)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        loop = asyncio.get_running_loop()
        job = _Job([seqs[i] for i in order], order, loop.create_future(), missing=len(seqs))
        self._jobs.append(job)
        self.queued += len(seqs)
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._dispatch(), name="labgate-embeddings-batcher")
        assert self._wake is not None
        self._wake.set()
        try:
            return await job.future
        finally:
            if not job.future.done():  # cancelled: its untaken inputs leave the queue
                job.future.cancel()
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        """A finished job (failed or cancelled part way) gives back the queue room of what was never taken."""
        if job.taken < len(job.seqs):
            self.queued -= len(job.seqs) - job.taken
            job.taken = len(job.seqs)

    async def _dispatch(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._jobs:
                await self._free.acquire()
                if self._max_wait > 0 and self.queued < self._max_batch:
                    await self._gather_more()
                batch = self._take()
                if not batch.pieces:
                    self._free.release()
                    continue
                self._start(batch)

    async def _gather_more(self) -> None:
        """Wait up to ``max_wait`` for the queue to fill a whole batch."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while self.queued < self._max_batch and (left := deadline - loop.time()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                break
        self._wake.set()

    def _take(self) -> _Pass:
        batch, room = _Pass(), self._max_batch
        while self._jobs and room:
            job = self._jobs[0]
            if job.future.done():
                self._jobs.popleft()
                continue
            end = min(len(job.seqs), job.taken + room)
            batch.pieces.append((job, job.taken, end))
            room -= end - job.taken
            self.queued -= end - job.taken
            job.taken = end
            self._jobs.popleft()
            if end < len(job.seqs):  # what is left waits behind the others: a big request cannot starve them
                self._jobs.append(job)
        return batch

    def _start(self, batch: _Pass) -> None:
        loop = asyncio.get_running_loop()
        try:
            running = loop.run_in_executor(self._executor, self._run, batch.seqs)
        except RuntimeError as exc:  # the pool was shut down (the provider is closing): fail, never hang
            running = loop.create_future()
            running.set_exception(UpstreamStatusError(f"the local embeddings engine is closed: {exc}",
                                                      upstream_status=503))
        self._passes.add(running)
        running.add_done_callback(lambda f: self._finish(batch, f))

    def _finish(self, batch: _Pass, running: asyncio.Future[np.ndarray]) -> None:
        self._passes.discard(running)
        self._free.release()
        error = None if running.cancelled() else running.exception()
        if running.cancelled() or error is not None:
            for job, _, _ in batch.pieces:
                if not job.future.done():
                    if error is None:
                        job.future.cancel()
                    else:
                        job.future.set_exception(error)
            return
        out = running.result()
        at = 0
        for job, start, end in batch.pieces:
            n = end - start
            if not job.future.done():
                if job.rows is None:
                    job.rows = _empty_like(out, len(job.seqs))
                job.rows[[job.order[i] for i in range(start, end)]] = out[at:at + n]
                job.missing -= n
                if job.missing == 0:
                    job.future.set_result(job.rows)
            at += n

    async def aclose(self) -> None:
        """Stop dispatching; requests still queued are cancelled (passes running finish in their threads)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.cancel()
        self.queued = 0


def _empty_like(out: np.ndarray, rows: int) -> np.ndarray:
    import numpy as np

    return np.empty((rows, out.shape[1]), dtype=out.dtype)
