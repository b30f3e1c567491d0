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
async def test_an_exhausted_pool_skips_without_marking_redis_down(silent_port: int) -> None:
    pytest.importorskip("redis", reason="the redis client is not installed: pip install 'labgate[redis]'")
    entries = RedisEntries(RedisLink(f"redis://127.0.0.1:{silent_port}/0", timeout_s=0.5, retry_s=30,
                                     max_connections=1))
    slow = asyncio.ensure_future(entries.get("labgate:t:" + "1" * 32))  # holds the only connection
    await asyncio.sleep(0.05)
    with pytest.raises(StateUnavailableError, match="in use"):
        await entries.get("labgate:t:" + "2" * 32)
    assert (entries.status()["busy"], entries.status()["up"]) == (1, True)
    with pytest.raises(StateUnavailableError):
        await slow
    await entries.aclose()
