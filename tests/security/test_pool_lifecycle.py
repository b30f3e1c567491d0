"""The pool's own bookkeeping under races: hand-over at a deadline, connect timeouts, closing with waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from labgate.errors import (
    DeploymentBusyError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)
from labgate.providers.http import HttpPool
from labgate.testing.hostile import HostileUpstream, Received, Step, echo, marked, response

pytestmark = pytest.mark.asyncio
TIMEOUT = 5.0


async def post(http: HttpPool, marker: str, timeout: float = TIMEOUT) -> str:
    status, _, body = await asyncio.wait_for(http.request("POST", "/x", marked(marker), timeout=timeout),
                                             TIMEOUT * 2)
    assert status == 200
    return str(orjson.loads(body)["m"])


async def test_a_connection_handed_to_a_waiter_as_it_gives_up_goes_back_to_the_pool() -> None:
    """put() hands the connection over and the waiter is cancelled in the same iteration (its deadline
    fired): the connection must come back, not leak with its slot."""
    async with HostileUpstream(lambda request: [echo(request)]) as up:
        http = HttpPool(up.url, name="up", headers={}, max_connections=1)
        try:
            assert await post(http, "a") == "a"
            pool = http._pool
            conn = await pool.acquire(asyncio.get_running_loop().time() + TIMEOUT)  # hold the only slot
            waiter = asyncio.create_task(pool.acquire(asyncio.get_running_loop().time() + TIMEOUT))
            await asyncio.sleep(0.01)
            assert len(pool._waiters) == 1
            pool.put(conn)  # handed to the waiter...
            waiter.cancel()  # ...which gives up before it runs
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert (pool.idle, pool.open) == (1, 1)
            assert await post(http, "b") == "b"
            assert up.accepted == 1
        finally:
            await http.aclose()


async def test_a_waiter_whose_deadline_fires_as_the_connection_is_handed_over_passes_it_on() -> None:
    async with HostileUpstream(lambda request: [echo(request)]) as up:
        http = HttpPool(up.url, name="up", headers={}, max_connections=1)
        try:
            assert await post(http, "a") == "a"
            pool = http._pool
            loop = asyncio.get_running_loop()
            conn = await pool.acquire(loop.time() + TIMEOUT)
            deadline = loop.time() + 0.05
            waiter = asyncio.create_task(pool.acquire(deadline))
            # hand the connection over in the same timer slot as the waiter's deadline
            loop.call_at(deadline, pool.put, conn)
            try:
                got = await waiter
            except DeploymentBusyError:  # the wait for a free connection ran out: busy, not broken
                got = None
            if got is not None:
                pool.put(got)
            assert (pool.idle, pool.open) == (1, 1)
            assert await post(http, "b") == "b"
            assert up.accepted == 1
        finally:
            await http.aclose()


async def test_a_connect_timeout_is_a_timeout_not_a_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "create_connection", never)
    http = HttpPool("http://127.0.0.1:9", name="up", headers={})
    try:
        started = loop.time()
        with pytest.raises(UpstreamTimeoutError) as caught:
            await asyncio.wait_for(http.request("GET", "/models", timeout=0.1), TIMEOUT)
        assert caught.value.message == "provider 'up' timed out connecting to 127.0.0.1:9"
        assert (caught.value.status, caught.value.code) == (504, "upstream_timeout")
        assert loop.time() - started < 0.1 + 1.0
        assert http._pool.open == 0  # the slot came back
    finally:
        await http.aclose()


async def test_closing_the_pool_fails_the_requests_waiting_for_a_connection_at_once() -> None:
    release = asyncio.Event()

    def script(request: Received) -> Sequence[Step]:
        return [] if request.marker == "held" else [echo(request)]

    async with HostileUpstream(script) as up:
        http = HttpPool(up.url, name="up", headers={}, max_connections=1)
        busy = asyncio.create_task(post(http, "held"))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(post(http, f"w{n}", timeout=30.0)) for n in range(3)]
        await asyncio.sleep(0.05)
        assert len(http._pool._waiters) == 3
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(http.aclose(), TIMEOUT)
        for task in [busy, *waiting]:
            with pytest.raises(UpstreamConnectionError, match="the connection pool was closed"):
                await asyncio.wait_for(task, TIMEOUT)
        assert asyncio.get_running_loop().time() - started < 2.0  # not the 30 s request timeout
        with pytest.raises(UpstreamConnectionError, match="the connection pool is closed"):
            await post(http, "late")
        release.set()


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 000 Nothing", b"HTTP/1.1 099 Low"])
async def test_a_status_below_100_is_never_a_success(status_line: bytes) -> None:
    answer = status_line + b"\r\ncontent-length: 2\r\n\r\n{}"
    async with HostileUpstream(lambda request: [answer]) as up:
        http = HttpPool(up.url, name="up", headers={})
        try:
            with pytest.raises(UpstreamBadResponseError, match=r"^provider 'up' sent the invalid status 0\d\d$"):
                await post(http, "a")
        finally:
            await http.aclose()


async def test_interim_answers_are_bounded() -> None:
    flood = b"HTTP/1.1 100 Continue\r\n\r\n" * 50 + response(b'{"m":"x"}')
    async with HostileUpstream(lambda request: [flood]) as up:
        http = HttpPool(up.url, name="up", headers={})
        try:
            with pytest.raises(UpstreamBadResponseError, match=r"more than 8 interim \(1xx\) responses"):
                await post(http, "a")
        finally:
            await http.aclose()


async def test_a_few_interim_answers_then_the_answer_is_read() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + response(marked("a"))
    async with HostileUpstream(lambda request: [answer]) as up:
        http = HttpPool(up.url, name="up", headers={})
        try:
            assert await post(http, "a") == "a"
            assert await post(http, "a") == "a"
            assert up.accepted == 1
        finally:
            await http.aclose()
