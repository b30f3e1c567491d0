"""The Redis state backend's edges, against a fake server that accepts and never answers (no Redis needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from labgate.state.base import StateUnavailableError
from labgate.state.redis import RedisEntries, RedisLink


@pytest_asyncio.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_a_hung_redis_costs_one_timeout_then_nothing(silent_port: int) -> None:
    pytest.importorskip("redis", reason="the redis client is not installed: pip install 'labgate[redis]'")
    entries = RedisEntries(RedisLink(f"redis://127.0.0.1:{silent_port}/0", timeout_s=0.2, retry_s=30,
                                     max_connections=4))
    started = time.monotonic()
    with pytest.raises(StateUnavailableError):
        await entries.get("labgate:t:" + "0" * 32)
    assert 0.15 < time.monotonic() - started < 1.0  # one timeout, no retries
    started = time.monotonic()
    with pytest.raises(StateUnavailableError):
        await entries.put("labgate:t:" + "0" * 32, b"x", 60)  # resting: no I/O at all
    assert time.monotonic() - started < 0.05
    status = entries.status()
    assert (status["up"], status["failures"], status["last_error"]) == (False, 1, "TimeoutError")
    await entries.aclose()


@pytest.mark.asyncio
async def test_an_exhausted_pool_waits_then_skips_without_marking_redis_down(silent_port: int) -> None:
    pytest.importorskip("redis", reason="the redis client is not installed: pip install 'labgate[redis]'")
    entries = RedisEntries(RedisLink(f"redis://127.0.0.1:{silent_port}/0", timeout_s=0.2, retry_s=30,
                                     max_connections=1))
    held = await entries.link._acquire()  # the only connection, busy elsewhere
    started = time.monotonic()
    with pytest.raises(StateUnavailableError, match="stayed in use"):
        await entries.get("labgate:t:" + "2" * 32)
    assert 0.15 < time.monotonic() - started < 1.0
    status = entries.status()
    assert (status["busy"], status["up"], status["failures"]) == (1, True, 0)
    entries.link._release(held)
    assert entries.link._idle == [held]
    await entries.aclose()


@pytest.mark.asyncio
async def test_a_waiter_handed_a_closed_connection_stops_when_redis_went_down(silent_port: int) -> None:
    pytest.importorskip("redis", reason="the redis client is not installed: pip install 'labgate[redis]'")
    entries = RedisEntries(RedisLink(f"redis://127.0.0.1:{silent_port}/0", timeout_s=0.3, retry_s=30,
                                     max_connections=1))
    started = time.monotonic()
    first = asyncio.ensure_future(entries.get("labgate:t:" + "1" * 32))  # times out, marks Redis down
    await asyncio.sleep(0.05)
    with pytest.raises(StateUnavailableError, match="unavailable"):
        await entries.get("labgate:t:" + "2" * 32)  # woken by the closed connection, not a second timeout
    assert time.monotonic() - started < 0.5
    with pytest.raises(StateUnavailableError):
        await first
    assert (entries.link._open, entries.status()["failures"], entries.status()["busy"]) == (0, 1, 0)
    await entries.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("gives_up", ["cancelled", "timed out"])
async def test_a_connection_handed_to_a_waiter_that_gives_up_is_passed_on(silent_port: int, gives_up: str) -> None:
    """A connection released to a waiter in the same loop iteration as its cancellation (its client
    left) or its timeout goes to the next waiter or the free list: never lost. Before, a lost one
    leaked a slot of max_connections for good; once all leaked, every lookup waited timeout_s."""
    pytest.importorskip("redis", reason="the redis client is not installed: pip install 'labgate[redis]'")
    link = RedisLink(f"redis://127.0.0.1:{silent_port}/0", timeout_s=0.2, retry_s=30, max_connections=1)
    held = await link._acquire()  # the only connection, busy elsewhere
    waiting = asyncio.create_task(link._acquire())
    await asyncio.sleep(0)  # the waiter is queued
    assert len(link._waiters) == 1
    if gives_up == "cancelled":
        link._release(held)  # handed over ...
        waiting.cancel()  # ... and cancelled before the waiter resumed
        with pytest.raises(asyncio.CancelledError):
            await waiting
    else:
        await asyncio.sleep(0.25)  # its timeout fires; the connection comes back just after
        with pytest.raises(StateUnavailableError, match="stayed in use"):
            await waiting
        link._release(held)
    assert link._idle == [held] and link._open == 1  # back on the free list, the count unchanged
    started = time.monotonic()
    assert await link._acquire() is held  # the next command gets it at once
    assert time.monotonic() - started < 0.05
    link._release(held)
    await link.aclose()
