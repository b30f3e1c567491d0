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
