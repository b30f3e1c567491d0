"""Micro-batching: concurrent requests share passes, in order, bounded, and cancellation-safe."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from labgate.errors import UpstreamRateLimitError, UpstreamStatusError
from labgate.providers.local_embeddings.batcher import Batcher

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"
if TYPE_CHECKING:
    import numpy as np
else:
    np = pytest.importorskip("numpy", reason=EXTRA)


class Engine:
    """A fake forward pass: row = (first id, length); records each pass; can be held or made to fail."""

    def __init__(self) -> None:
        self.passes: list[list[list[int]]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.fail_next = False
        self.started = 0

    def run(self, batch: list[list[int]]) -> np.ndarray:
        self.started += 1
        self.hold.wait(5)
        self.passes.append(batch)
        if self.fail_next:
            self.fail_next = False
            raise UpstreamStatusError("engine failed", upstream_status=500)
        return np.array([[s[0], len(s)] for s in batch], dtype=np.float32)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def batcher(engine: Engine, pool: ThreadPoolExecutor, **limits: float) -> Batcher:
    settings = {"workers": 1, "max_batch": 4, "max_wait": 0.0, "max_queued": 100, **limits}
    return Batcher(engine.run, executor=pool, **settings)  # type: ignore[arg-type]


async def until(condition: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.002)


@pytest.mark.asyncio
async def test_requests_queued_while_a_pass_runs_share_the_next_pass(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool)
    engine.hold.clear()
    first = asyncio.create_task(b.embed([[1]]))
    await until(lambda: engine.started == 1)  # the first pass took it and is held
    others = [asyncio.create_task(b.embed([[n]])) for n in (2, 3, 4, 5, 6)]
    await until(lambda: b.queued == 5)
    engine.hold.set()
    results = await asyncio.gather(first, *others)
    assert [r.tolist() for r in results] == [[[n, 1]] for n in (1, 2, 3, 4, 5, 6)]
    assert engine.passes == [[[1]], [[2], [3], [4], [5]], [[6]]]  # max_batch 4
    assert b.queued == 0


@pytest.mark.asyncio
async def test_a_large_request_is_split_sorted_by_length_and_returned_in_order(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool, max_batch=2)
    seqs = [[10, 0, 0], [11], [12, 0, 0, 0, 0], [13, 0], [14]]
    rows = await b.embed(seqs)
    assert rows.tolist() == [[10, 3], [11, 1], [12, 5], [13, 2], [14, 1]]
    assert [[len(s) for s in p] for p in engine.passes] == [[1, 1], [2, 3], [5]]


@pytest.mark.asyncio
async def test_a_full_queue_is_a_429_with_retry_after_and_its_room_comes_back(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool, max_queued=3)
    engine.hold.clear()
    held = asyncio.create_task(b.embed([[1]]))
    await until(lambda: engine.started == 1)
    waiting = asyncio.create_task(b.embed([[2], [3]]))
    await until(lambda: b.queued == 2)
    with pytest.raises(UpstreamRateLimitError) as caught:
        await b.embed([[4], [5]])
    assert (caught.value.status, caught.value.retry_after) == (429, 1.0)
    engine.hold.set()
    await asyncio.gather(held, waiting)
    assert (await b.embed([[6], [7], [8]])).tolist() == [[6, 1], [7, 1], [8, 1]]


@pytest.mark.asyncio
async def test_a_cancelled_request_is_never_computed_and_frees_its_room(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool)
    engine.hold.clear()
    held = asyncio.create_task(b.embed([[1]]))
    await until(lambda: engine.started == 1)
    gone = asyncio.create_task(b.embed([[2], [3]]))
    kept = asyncio.create_task(b.embed([[4]]))
    await until(lambda: b.queued == 3)
    gone.cancel()
    await asyncio.sleep(0)
    assert b.queued == 1
    engine.hold.set()
    await asyncio.gather(held, kept)
    assert engine.passes == [[[1]], [[4]]]


@pytest.mark.asyncio
async def test_a_failed_pass_fails_its_requests_only(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool)
    engine.fail_next = True
    with pytest.raises(UpstreamStatusError, match="engine failed"):
        await b.embed([[1], [2]])
    assert (await b.embed([[3]])).tolist() == [[3, 1]]
    assert b.queued == 0


@pytest.mark.asyncio
async def test_a_request_split_over_passes_that_fails_gives_back_its_untaken_room(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool, max_batch=2)
    engine.fail_next = True
    with pytest.raises(UpstreamStatusError):
        await b.embed([[1], [2], [3], [4], [5]])
    assert b.queued == 0
    assert (await b.embed([[6]])).tolist() == [[6, 1]]


@pytest.mark.asyncio
async def test_max_wait_gathers_requests_that_arrive_close_together(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool, max_wait=0.2)
    first = asyncio.create_task(b.embed([[1]]))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(b.embed([[2]]))
    await asyncio.gather(first, second)
    assert engine.passes == [[[1], [2]]]


@pytest.mark.asyncio
async def test_max_wait_ends_early_once_a_batch_is_full(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool, max_wait=5.0)
    started = asyncio.get_running_loop().time()
    await b.embed([[1], [2], [3], [4]])
    assert asyncio.get_running_loop().time() - started < 1.0
    assert engine.passes == [[[1], [2], [3], [4]]]


@pytest.mark.asyncio
async def test_close_cancels_what_is_queued(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool)
    engine.hold.clear()
    held = asyncio.create_task(b.embed([[1]]))
    await until(lambda: engine.started == 1)
    queued = asyncio.create_task(b.embed([[2]]))
    await until(lambda: b.queued == 1)
    await b.aclose()
    engine.hold.set()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert (await held).tolist() == [[1, 1]]


@pytest.mark.asyncio
async def test_a_large_request_takes_turns_with_the_small_ones_behind_it(pool: ThreadPoolExecutor) -> None:
    engine = Engine()
    b = batcher(engine, pool)
    engine.hold.clear()
    held = asyncio.create_task(b.embed([[1]]))
    await until(lambda: engine.started == 1)
    big = asyncio.create_task(b.embed([[20 + i] for i in range(10)]))
    await until(lambda: b.queued == 10)
    small = asyncio.create_task(b.embed([[9]]))
    await until(lambda: b.queued == 11)
    engine.hold.set()
    await asyncio.gather(held, big, small)
    assert [[s[0] for s in p] for p in engine.passes] == [
        [1], [20, 21, 22, 23], [9, 24, 25, 26], [27, 28, 29]]


@pytest.mark.asyncio
async def test_a_closed_pool_fails_requests_instead_of_hanging() -> None:
    engine = Engine()
    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown()
    b = batcher(engine, executor)
    with pytest.raises(UpstreamStatusError, match="the local embeddings engine is closed"):
        await asyncio.wait_for(b.embed([[1]]), 5)
    assert b.queued == 0
