"""The Pool's bookkeeping, driven directly: slots, the retry's fresh connection, the idle sweep, closing.

Each test holds real connections to a local upstream (no request is needed: a connection the pool
handed out can be put back). The mutation run of ``providers/pool.py`` (docs/testing.md) led here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from labgate.errors import (
    DeploymentBusyError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)
from labgate.providers import pool as pool_module
from labgate.providers.pool import IDLE_EXPIRY_S, Connection, Pool
from labgate.testing.hostile import HostileUpstream, Received, Step, echo

pytestmark = pytest.mark.asyncio
WHERE = "provider 'up'"


def script(request: Received) -> list[Step]:
    return [echo(request)]


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[HostileUpstream]:
    async with HostileUpstream(script) as up:
        yield up


def soon(seconds: float = 5.0) -> float:
    """A deadline far enough not to matter."""
    return asyncio.get_running_loop().time() + seconds


async def until(condition: Any, what: str) -> None:
    """Wait for ``condition()`` (events of the loop), up to 5 s."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_acquire_new_on_a_closed_pool_names_the_provider(upstream: HostileUpstream) -> None:
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE)
    await pool.aclose()
    with pytest.raises(UpstreamConnectionError) as caught:
        await pool.acquire_new(soon())
    assert caught.value.message == "provider 'up': the connection pool is closed"


async def test_acquire_new_below_the_limit_opens_a_connection_in_a_new_slot(upstream: HostileUpstream) -> None:
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE, limit=3)
    try:
        first = await pool.acquire_new(soon())
        assert pool.open == 1
        second = await pool.acquire_new(soon())
        assert pool.open == 2
        assert first is not second
        await until(lambda: upstream.accepted == 2, "two connections accepted")
    finally:
        await pool.aclose()


async def test_acquire_new_at_the_limit_closes_the_oldest_idle_connection_for_its_slot(
        upstream: HostileUpstream) -> None:
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE, limit=2)
    try:
        older, newer = await pool.acquire(soon()), await pool.acquire(soon())
        pool.put(older)
        pool.put(newer)
        assert (pool.idle, pool.open) == (2, 2)
        fresh = await pool.acquire_new(soon(0.5))  # at the limit, not waiting: an idle one gives its slot
        assert fresh is not older and fresh is not newer
        await until(lambda: older.lost, "the oldest idle connection closed")
        assert not newer.lost
        assert (pool.idle, pool.open) == (1, 2)  # the closed one's slot is the new one's
        pool.put(fresh)
        assert (pool.idle, pool.open) == (2, 2)
        await until(lambda: upstream.accepted == 3, "the new connection accepted")
    finally:
        await pool.aclose()


async def test_acquire_new_at_the_limit_with_none_idle_waits_until_its_deadline(upstream: HostileUpstream) -> None:
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE, limit=1)
    try:
        held = await pool.acquire(soon())
        with pytest.raises(DeploymentBusyError):
            await asyncio.wait_for(pool.acquire_new(soon(0.05)), 5.0)
        assert (pool.idle, pool.open) == (0, 1)
        pool.put(held)
    finally:
        await pool.aclose()


async def test_acquire_new_connects_within_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "create_connection", never)
    pool = Pool("127.0.0.1", 9, tls=False, where=WHERE)
    try:
        with pytest.raises(UpstreamTimeoutError):
            await asyncio.wait_for(pool.acquire_new(soon(0.05)), 5.0)
        assert pool.open == 0
    finally:
        await pool.aclose()


async def test_the_sweep_closes_what_has_been_idle_long_enough_and_comes_back_for_the_rest(
        upstream: HostileUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE)
    loop = asyncio.get_running_loop()
    try:
        conns: list[Connection] = [await pool.acquire(soon()) for _ in range(3)]
        for conn in conns:
            pool.put(conn)
        expired, at_the_limit, recent = conns
        now = loop.time()
        expired.idle_since = now - IDLE_EXPIRY_S - 1.0
        at_the_limit.idle_since = now - IDLE_EXPIRY_S  # idle exactly IDLE_EXPIRY_S: expired too
        recent.idle_since = now - IDLE_EXPIRY_S + 0.05  # 50 ms left
        monkeypatch.setattr(loop, "time", lambda: now)  # the sweep reads the clock once, now
        pool._sweep()
        monkeypatch.undo()
        assert pool.idle == 1
        assert expired.transport is not None and expired.transport.is_closing()
        assert at_the_limit.transport is not None and at_the_limit.transport.is_closing()
        assert recent.transport is not None and not recent.transport.is_closing()
        sweeper = pool._sweeper
        assert sweeper is not None and sweeper.when() == recent.idle_since + IDLE_EXPIRY_S
        await until(lambda: recent.lost, "the sweep came back and closed the last one")
        assert (pool.idle, pool.open) == (0, 0)
        assert pool._sweeper is None  # nothing idle: nothing to come back for
    finally:
        await pool.aclose()


async def test_the_sweeper_is_started_by_the_first_idle_connection(
        upstream: HostileUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "IDLE_EXPIRY_S", 0.05)
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE)
    try:
        conn = await pool.acquire(soon())
        assert pool._sweeper is None
        pool.put(conn)
        sweeper = pool._sweeper
        assert sweeper is not None and sweeper.when() == conn.idle_since + 0.05
        await until(lambda: conn.lost, "an idle connection closed after IDLE_EXPIRY_S")
        assert (pool.idle, pool.open) == (0, 0)
    finally:
        await pool.aclose()


@pytest.mark.parametrize("unfit", ["closing", "dirty"])
async def test_put_neither_pools_nor_hands_over_a_connection_unfit_for_another_request(
        upstream: HostileUpstream, unfit: str) -> None:
    """Closing: closed, its loss not yet reported; dirty: unread bytes seen (``ready()``), not yet aborted."""
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE, limit=1)
    try:
        conn = await pool.acquire(soon())
        waiter = asyncio.create_task(pool.acquire(soon()))
        await until(lambda: len(pool._waiters) == 1, "a request waiting for the only slot")
        if unfit == "closing":
            conn.close()
        else:
            conn._dirty = True
        pool.put(conn)
        assert pool.idle == 0
        assert conn.transport is not None and conn.transport.is_closing()
        fresh = await asyncio.wait_for(waiter, 5.0)  # the slot, not the connection, went to the waiter
        assert fresh is not conn and fresh.ready()
        pool.put(fresh)
        assert (pool.idle, pool.open) == (1, 1)
    finally:
        await pool.aclose()


async def test_an_idle_connection_closed_before_its_loss_is_reported_is_not_handed_out(
        upstream: HostileUpstream) -> None:
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE)
    try:
        conn = await pool.acquire(soon())
        pool.put(conn)
        conn.close()  # closing; connection_lost (which forgets it) comes an iteration later
        assert pool.idle == 1
        got = await pool.acquire(soon())
        assert got is not conn and got.ready()
        assert (pool.idle, pool.open) == (0, 1)
        await until(lambda: conn.lost, "the closed connection reported lost")
        assert pool._all == {got}  # forgotten: not among the connections aclose will fail
        pool.put(got)
    finally:
        await pool.aclose()


async def test_a_connection_that_turned_unfit_after_its_hand_over_is_replaced_for_the_waiter(
        upstream: HostileUpstream) -> None:
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE, limit=1)
    try:
        conn = await pool.acquire(soon())
        waiter = asyncio.create_task(pool.acquire(soon()))
        await until(lambda: len(pool._waiters) == 1, "a request waiting for the only slot")
        pool.put(conn)  # handed over...
        conn.close()  # ...and closed before the waiter runs
        got = await asyncio.wait_for(waiter, 5.0)
        assert got is not None and got is not conn and got.ready()
        pool.put(got)
        assert (pool.idle, pool.open) == (1, 1)
    finally:
        await pool.aclose()


async def test_a_waiter_given_a_free_slot_connects_within_its_deadline(
        upstream: HostileUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE, limit=1)
    try:
        conn = await pool.acquire(soon())
        waiter = asyncio.create_task(pool.acquire(soon(0.3)))
        await until(lambda: len(pool._waiters) == 1, "a request waiting for the only slot")

        async def never(*args: Any, **kwargs: Any) -> Any:
            await asyncio.Event().wait()

        monkeypatch.setattr(loop, "create_connection", never)
        conn.abort()  # its slot passes to the waiter, whose connect never completes
        with pytest.raises(UpstreamTimeoutError):
            await asyncio.wait_for(waiter, 5.0)
        assert pool.open == 0
    finally:
        await pool.aclose()


async def test_the_pool_connects_to_its_own_host() -> None:
    """Not the loopback address a missing host resolves to: the upstream listens on 127.0.0.2 only."""
    accepted = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool("127.0.0.2", port, tls=False, where=WHERE)
    try:
        conn = await pool.acquire(soon())
        await asyncio.wait_for(accepted.wait(), 5.0)
        assert conn.transport is not None and conn.transport.get_extra_info("peername")[0] == "127.0.0.2"
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()


async def test_a_connection_made_as_the_pool_closes_is_dropped(
        upstream: HostileUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE)
    connect = loop.create_connection

    async def then_close(*args: Any, **kwargs: Any) -> Any:
        made = await connect(*args, **kwargs)
        await pool.aclose()  # closed while the connection was being made
        return made

    monkeypatch.setattr(loop, "create_connection", then_close)
    with pytest.raises(UpstreamConnectionError) as caught:
        await asyncio.wait_for(pool.acquire(soon()), 5.0)
    assert caught.value.message == "provider 'up': the connection pool is closed"
    await until(lambda: pool.open == 0 and not pool._all, "the connection dropped with its slot")


async def test_put_does_not_count_a_closing_connection_as_idle(upstream: HostileUpstream) -> None:
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE)
    try:
        conn = await pool.acquire(soon())
        conn.close()
        pool.put(conn)
        assert (pool.idle, pool._sweeper) == (0, None)
    finally:
        await pool.aclose()


async def test_a_connection_handed_over_with_unread_bytes_waiting_is_not_used() -> None:
    """The bytes reach the socket before the waiter runs, and the loop has not read them: ready()'s poll
    must see them (used, they would be read as the next request's answer)."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = Pool("127.0.0.1", server.sockets[0].getsockname()[1], tls=False, where=WHERE, limit=1)
    try:
        conn = await pool.acquire(soon())
        await until(lambda: len(writers) == 1, "the upstream has the connection")
        waiter = asyncio.create_task(pool.acquire(soon()))
        await until(lambda: len(pool._waiters) == 1, "a request waiting for the only slot")
        writers[0].write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")  # sent at once: loopback
        pool.put(conn)  # handed over in the same step: the waiter runs before the loop reads the bytes
        got = await asyncio.wait_for(waiter, 5.0)
        assert got is not conn
        await until(lambda: conn.lost, "the connection with unread bytes dropped")
        pool.put(got)
        assert (pool.idle, pool.open) == (1, 1)
    finally:
        await pool.aclose()
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_reading_pauses_again_after_a_resume(upstream: HostileUpstream) -> None:
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE)
    try:
        conn = await pool.acquire(soon())
        transport = conn.transport
        assert transport is not None
        conn.pause()
        assert not transport.is_reading()
        conn.resume()
        assert transport.is_reading()
        conn.pause()  # a second stream on the connection, read slowly
        assert not transport.is_reading()
        conn.resume()
        pool.put(conn)
    finally:
        await pool.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_an_exchange_given_up_ends_its_connection_quietly(stream: bool) -> None:
    """abandon() (the caller cancelled) and cut() (a stream's reader stopped): the connection is aborted and
    its loss reported to no one, with no error raised inside the loop."""
    loop = asyncio.get_running_loop()
    raised: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: raised.append(context))
    try:
        async with HostileUpstream(lambda request: []) as up:  # never answers
            pool = Pool("127.0.0.1", up.port, tls=False, where=WHERE)
            try:
                conn = await pool.acquire(soon())
                waiter = conn.send(b"GET /x HTTP/1.1\r\nhost: up\r\n\r\n", stream=stream)
                if stream:
                    body = conn._stream
                    assert body is not None
                    conn.cut(body)
                else:
                    conn.abandon(waiter)
                await asyncio.wait_for(conn.closed, 5.0)
                await asyncio.sleep(0)
                assert not waiter.done()  # nobody is told: the caller has gone
                assert (pool.idle, pool.open) == (0, 0)
            finally:
                await pool.aclose()
    finally:
        loop.set_exception_handler(previous)
    assert raised == []


async def test_a_parser_callback_that_fails_unexpectedly_is_a_bad_response(
        upstream: HostileUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not one of the limits (those halt with their own error): reported as an answer we could not parse."""

    def broken(self: Connection, name: bytes, value: bytes) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Connection, "on_header", broken)  # llhttp binds the callbacks as a parser is made
    pool = Pool("127.0.0.1", upstream.port, tls=False, where=WHERE)
    try:
        conn = await pool.acquire(soon())
        waiter = conn.send(b"POST /x HTTP/1.1\r\nhost: up\r\ncontent-length: 2\r\n\r\n{}", stream=False)
        with pytest.raises(UpstreamBadResponseError) as caught:
            await asyncio.wait_for(waiter, 5.0)
        assert caught.value.message == (  # httptools' own words: the callback that raised, as llhttp names it
            "provider 'up' sent a response we could not parse (`on_header_field` callback error)")
        await asyncio.wait_for(conn.closed, 5.0)
    finally:
        await pool.aclose()
