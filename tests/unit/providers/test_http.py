"""HttpPool and its keep-alive connections, against real servers on 127.0.0.1.

The upstream is a raw asyncio server scripted per test (:class:`Upstream`): it
counts the connections it accepts and those the client hangs up, and keeps
every request as it arrived, so reuse, framing and what we write are asserted
on the wire. Like the server's tests, every case is a fixture-free coroutine
run on the default loop and again on uvloop (``test_under_uvloop``); every
await has a timeout, so a bug fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import uvloop

from labgate.errors import (
    DeploymentBusyError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from labgate.providers import pool as pool_module
from labgate.providers.http import HttpPool, fetch

T = TypeVar("T")
TIMEOUT = 5.0
OK = b'{"ok":true}'
BODY = b'{"a":1}'


async def within(awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


async def eventually(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 (nothing to wait on: the condition is on the other side)
            await asyncio.sleep(0.005)
    await within(poll())


# --- a scripted upstream


@dataclass(frozen=True)
class Seen:
    """One request as the upstream read it."""

    head: bytes  # request line and header section, byte for byte
    body: bytes
    connection: int  # which accepted connection carried it: 0, 1, …


# Writes the answer to one request; returns False to close the connection afterwards.
Answer = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]


def reply(body: bytes = OK, *, status: str = "200 OK", headers: tuple[str, ...] = ()) -> bytes:
    head = "".join(f"{line}\r\n" for line in ("content-type: application/json", *headers))
    return f"HTTP/1.1 {status}\r\n{head}content-length: {len(body)}\r\n\r\n".encode() + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces)


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


async def ok(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    writer.write(reply())
    return True


class Upstream:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.port = 0
        self.accepted = 0
        self.requests: list[Seen] = []
        self._readers: list[asyncio.StreamReader] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        index = self.accepted
        self.accepted += 1
        self._readers.append(reader)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                seen = Seen(head, await reader.readexactly(length), index)
                self.requests.append(seen)
                if not await self.answer(seen, writer):
                    return
                await writer.drain()
        except asyncio.CancelledError:
            return  # stopped: end quietly (asyncio's streams log a cancelled handler as an error)
        finally:
            writer.close()
            self._tasks.discard(task)

    @property
    def hung_up(self) -> int:
        """Connections the client has closed (seen even while an answer is being written)."""
        return sum(1 for reader in self._readers if reader.at_eof() or reader.exception() is not None)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def upstream(answer: Answer = ok, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Upstream]:
    up = Upstream(answer)
    server = await within(asyncio.start_server(up.serve, "127.0.0.1", 0, ssl=tls))
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()
        await within(up.stop())
        await within(server.wait_closed())


@contextlib.asynccontextmanager
async def client(up: Upstream, *, scheme: str = "http", host: str = "127.0.0.1",
                 max_connections: int = 0) -> AsyncIterator[HttpPool]:
    http = HttpPool(f"{scheme}://{host}:{up.port}/v1", name="up", headers={"Authorization": "Bearer k"},
                    max_connections=max_connections)
    try:
        yield http
    finally:
        await within(http.aclose())


def idle(http: HttpPool) -> int:
    return http._pool.idle  # what the pool holds for reuse (not on the wire: asserted directly)


async def post(http: HttpPool, body: bytes = BODY, *, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    status, headers, data = await within(http.request("POST", "/chat/completions", body, timeout=timeout))
    return status, dict(headers), data


def head_of(up: Upstream, method: str, path: str, length: int | None) -> bytes:
    framing = "" if length is None else f"content-length: {length}\r\n"
    return (f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{up.port}\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer k\r\nconnection: keep-alive\r\n{framing}\r\n").encode()


# --- requests and answers


@pytest.mark.asyncio
async def test_request_is_one_message_and_the_answer_is_read_by_content_length() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply(headers=("Retry-After: 3", "X-Seen: a", "x-seen: b")))
        return True

    async with upstream(answer) as up, client(up) as http:
        assert await post(http) == (200, {"content-type": "application/json", "retry-after": "3",
                                          "x-seen": "a, b", "content-length": "11"}, OK)
        assert up.requests == [Seen(head_of(up, "POST", "/v1/chat/completions", len(BODY)), BODY, 0)]


@pytest.mark.asyncio
async def test_get_sends_no_body_and_no_length() -> None:
    async with upstream() as up, client(up) as http:
        assert await within(http.request("GET", "/models?limit=5", timeout=TIMEOUT)) == (
            200, {"content-type": "application/json", "content-length": "11"}, OK)
        assert up.requests == [Seen(head_of(up, "GET", "/v1/models?limit=5", None), b"", 0)]


@pytest.mark.asyncio
async def test_chunked_answer_is_dechunked() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(b'{"ok"'))
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(chunked(b":", b"true}") + LAST_CHUNK)
        return True

    async with upstream(answer) as up, client(up) as http:
        assert await post(http) == (200, {"transfer-encoding": "chunked"}, OK)
        assert await post(http) == (200, {"transfer-encoding": "chunked"}, OK)
        assert up.accepted == 1


@pytest.mark.asyncio
async def test_answer_without_length_ends_at_the_close_and_its_connection_is_not_reused() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + OK)
        return False

    async with upstream(answer) as up, client(up) as http:
        assert await post(http) == (200, {"content-type": "application/json"}, OK)
        assert await post(http) == (200, {"content-type": "application/json"}, OK)
        assert [seen.connection for seen in up.requests] == [0, 1]


@pytest.mark.asyncio
async def test_head_answer_has_no_body_and_its_connection_is_not_reused() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply().removesuffix(OK))  # the length a GET would have, and no body
        return True

    async with upstream(answer) as up, client(up) as http:
        assert await within(http.request("HEAD", "/models", timeout=TIMEOUT)) == (
            200, {"content-type": "application/json", "content-length": "11"}, b"")
        await eventually(lambda: up.hung_up == 1)


@pytest.mark.asyncio
async def test_interim_100_continue_is_skipped() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + reply())
        return True

    async with upstream(answer) as up, client(up) as http:
        assert await post(http) == (200, {"content-type": "application/json", "content-length": "11"}, OK)
        assert await post(http) == (200, {"content-type": "application/json", "content-length": "11"}, OK)
        assert up.accepted == 1


# --- keep-alive


@pytest.mark.asyncio
async def test_keep_alive_serves_requests_and_streams_on_one_connection() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.head.startswith(b"POST /v1/stream "):
            writer.write(STREAM_HEAD + chunked(b"data: 1\n\n") + LAST_CHUNK)
        else:
            writer.write(reply())
        return True

    async with upstream(answer) as up, client(up) as http:
        for _ in range(3):
            assert (await post(http))[2] == OK
            stream = await within(http.open_stream("/stream", BODY, timeout=TIMEOUT))
            assert [chunk async for chunk in stream.chunks()] == [b"data: 1\n\n"]
        assert [seen.connection for seen in up.requests] == [0] * 6
        assert (up.accepted, idle(http)) == (1, 1)


@pytest.mark.asyncio
async def test_connection_close_answer_is_not_reused() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply(headers=("connection: close",)))
        return True  # the server would go on: closing is the client's decision

    async with upstream(answer) as up, client(up) as http:
        assert (await post(http))[2] == OK
        assert (await post(http))[2] == OK
        assert [seen.connection for seen in up.requests] == [0, 1]
        await eventually(lambda: up.hung_up == 2)


@pytest.mark.asyncio
async def test_idle_connection_the_server_closed_is_not_handed_out() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply())
        return False  # a keep-alive answer, then the server closes the idle connection

    async with upstream(answer) as up, client(up) as http:
        assert (await post(http))[2] == OK
        await eventually(lambda: idle(http) == 0)
        assert (await post(http))[2] == OK
        assert [seen.connection for seen in up.requests] == [0, 1]


def first_on_its_connection(up: Upstream, seen: Seen) -> bool:
    return [s.connection for s in up.requests].count(seen.connection) == 1


def second_on_its_connection(up: Upstream, seen: Seen) -> bool:
    return [s.connection for s in up.requests].count(seen.connection) == 2


@pytest.mark.asyncio
async def test_idempotent_request_is_retried_once_when_a_reused_connection_drops_it() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if second_on_its_connection(up, seen):
            return False  # as if an idle close raced the request: it was written, nothing comes back
        writer.write(reply())
        return True

    async with upstream(answer) as up, client(up) as http:
        for _ in range(2):
            assert await within(http.request("GET", "/models", timeout=TIMEOUT)) == (
                200, {"content-type": "application/json", "content-length": "11"}, OK)
        assert [seen.connection for seen in up.requests] == [0, 0, 1]


async def two_stale_idle_connections(up: Upstream, http: HttpPool, release: asyncio.Event) -> None:
    """Open two connections at once and leave both idle (``answer`` must wait for ``release``)."""
    first = [asyncio.create_task(within(http.request("GET", "/models", timeout=TIMEOUT))) for _ in range(2)]
    await eventually(lambda: len(up.requests) == 2)
    release.set()
    await within(asyncio.gather(*first))
    assert (up.accepted, idle(http)) == (2, 2)


@pytest.mark.asyncio
async def test_the_retry_goes_on_a_fresh_connection_when_two_idle_ones_went_stale() -> None:
    """Both idle connections drop the next request unanswered: the retry opens a new one and succeeds."""
    release = asyncio.Event()

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if second_on_its_connection(up, seen):
            return False  # written, nothing comes back: as if an idle close raced the request
        await release.wait()
        writer.write(reply())
        return True

    async with upstream(answer) as up, client(up) as http:
        await two_stale_idle_connections(up, http, release)
        assert (await within(http.request("GET", "/models", timeout=TIMEOUT)))[2] == OK
        third, fourth = (seen.connection for seen in up.requests[2:])
        assert (third < 2, fourth) == (True, 2)  # an idle one, then a new one
        assert (up.accepted, idle(http)) == (3, 2)  # the other stale one is still idle, as it was


@pytest.mark.asyncio
async def test_an_idempotent_request_is_sent_at_most_twice() -> None:
    """The retry's fresh connection drops the request too: the error, and never a third try."""
    release = asyncio.Event()

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.connection >= 2 or second_on_its_connection(up, seen):
            return False  # written, nothing comes back
        await release.wait()
        writer.write(reply())
        return True

    async with upstream(answer) as up, client(up) as http:
        await two_stale_idle_connections(up, http, release)
        with pytest.raises(UpstreamConnectionError):
            await within(http.request("GET", "/models", timeout=TIMEOUT))
        assert (len(up.requests), up.requests[-1].connection, up.accepted) == (4, 2, 3)


@pytest.mark.asyncio
async def test_a_retry_at_the_connection_limit_waits_and_opens_a_new_connection_in_a_freed_slot() -> None:
    """At ``max_connections``: the retry queues; the connection handed to it is closed for a new one."""
    hold = asyncio.Event()

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if b"/drop " in seen.head and not first_on_its_connection(up, seen):
            return False  # a stale reused connection: written, nothing comes back
        if b"/hold " in seen.head:
            await hold.wait()
        writer.write(reply())
        return True

    async with upstream(answer) as up, client(up, max_connections=2) as http:
        await within(asyncio.gather(*(http.request("GET", "/models", timeout=TIMEOUT) for _ in range(2))))
        assert (up.accepted, idle(http)) == (2, 2)
        # one holds an idle connection, the retry's first try drops on the other, a third waits for the freed slot
        calls = [asyncio.create_task(within(http.request("GET", path, timeout=TIMEOUT)))
                 for path in ("/hold", "/drop", "/hold")]
        await eventually(lambda: up.accepted == 3 and len(up.requests) == 2 + 3)  # the waiter's new connection
        hold.set()
        results = await within(asyncio.gather(*calls))
        assert [result[2] for result in results] == [OK, OK, OK]
        assert (up.requests[-1].connection, b"/drop " in up.requests[-1].head, up.accepted) == (3, True, 4)
        await eventually(lambda: up.hung_up == 2)  # the stale one, and the one handed over for its slot
        assert (idle(http), http._pool.open) == (2, 2)


@pytest.mark.asyncio
async def test_post_is_not_retried_when_a_reused_connection_drops_it() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if second_on_its_connection(up, seen):
            return False  # as if an idle close raced the request: it was written, nothing comes back
        writer.write(reply())
        return True

    async with upstream(answer) as up, client(up) as http:
        assert (await post(http))[2] == OK
        with pytest.raises(UpstreamConnectionError) as caught:
            await post(http)
        assert caught.value.message.startswith("provider 'up' closed the connection before answering")
        assert [seen.connection for seen in up.requests] == [0, 0]


@pytest.mark.asyncio
async def test_request_on_a_new_connection_is_not_retried() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        return False

    async with upstream(answer) as up, client(up) as http:
        with pytest.raises(UpstreamConnectionError, match="closed the connection before answering"):
            await within(http.request("GET", "/models", timeout=TIMEOUT))
        assert len(up.requests) == 1


@pytest.mark.asyncio
async def test_idle_connection_expires() -> None:
    expiry, pool_module.IDLE_EXPIRY_S = pool_module.IDLE_EXPIRY_S, 0.05
    try:
        async with upstream() as up, client(up) as http:
            assert (await post(http))[2] == OK
            assert idle(http) == 1
            await eventually(lambda: up.hung_up == 1)
            assert idle(http) == 0
            assert (await post(http))[2] == OK
            assert up.accepted == 2
    finally:
        pool_module.IDLE_EXPIRY_S = expiry


# --- the connection limit


def held_until(release: asyncio.Event) -> Answer:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(reply(seen.body))
        return True
    return answer


@pytest.mark.asyncio
async def test_max_connections_queues_further_requests_first_come_first_served() -> None:
    release = asyncio.Event()
    async with upstream(held_until(release)) as up, client(up, max_connections=2) as http:
        tasks = []
        for body in (b"1", b"2", b"3", b"4", b"5"):
            tasks.append(asyncio.create_task(post(http, body)))
            await asyncio.sleep(0.01)  # queue in this order
        await eventually(lambda: len(up.requests) == 2)
        await asyncio.sleep(0.05)
        assert (len(up.requests), up.accepted) == (2, 2)
        release.set()
        assert [result[2] for result in await within(asyncio.gather(*tasks))] == [b"1", b"2", b"3", b"4", b"5"]
        assert [seen.body for seen in up.requests] == [b"1", b"2", b"3", b"4", b"5"]
        assert up.accepted == 2


@pytest.mark.asyncio
async def test_waiting_for_a_connection_counts_against_the_timeout() -> None:
    release = asyncio.Event()
    async with upstream(held_until(release)) as up, client(up, max_connections=1) as http:
        first = asyncio.create_task(post(http, b"1"))
        await eventually(lambda: len(up.requests) == 1)
        with pytest.raises(DeploymentBusyError) as caught:  # busy, not broken: never a circuit failure
            await post(http, b"2", timeout=0.1)
        assert caught.value.message == "provider 'up' is busy: no free connection within the time left (all 1 in use)"
        release.set()
        assert (await within(first))[2] == b"1"
        assert (await post(http, b"3"))[2] == b"3"
        assert (up.accepted, [seen.body for seen in up.requests]) == (1, [b"1", b"3"])


@pytest.mark.asyncio
async def test_a_closed_connection_frees_its_slot_for_a_waiter() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(reply(seen.body, headers=("connection: close",)))
        return True

    async with upstream(answer) as up, client(up, max_connections=1) as http:
        results = await within(asyncio.gather(*(post(http, body) for body in (b"1", b"2", b"3"))))
        assert [result[2] for result in results] == [b"1", b"2", b"3"]
        assert [seen.connection for seen in up.requests] == [0, 1, 2]


# --- failures


@pytest.mark.asyncio
async def test_no_answer_within_the_timeout_is_a_timeout_and_the_connection_is_dropped() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.connection == 0:
            await asyncio.Event().wait()
        writer.write(reply())
        return True

    async with upstream(answer) as up, client(up) as http:
        with pytest.raises(UpstreamTimeoutError) as caught:
            await post(http, timeout=0.1)
        assert caught.value.message == "provider 'up' timed out after 0.1 s"
        assert (await post(http))[2] == OK
        assert up.accepted == 2


@pytest.mark.asyncio
async def test_refused_port_is_a_connection_error_naming_the_provider() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = HttpPool(f"http://127.0.0.1:{port}", name="up", headers={})
    try:
        with pytest.raises(UpstreamConnectionError) as caught:
            await within(http.request("GET", "/models", timeout=TIMEOUT))
        assert caught.value.message.startswith(f"cannot connect to provider 'up' at 127.0.0.1:{port} (")
    finally:
        await within(http.aclose())


@pytest.mark.asyncio
async def test_cut_mid_body_is_a_connection_error() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply(b"x" * 100)[:-90])
        return False

    async with upstream(answer) as up, client(up) as http:
        with pytest.raises(UpstreamConnectionError) as caught:
            await post(http)
        assert caught.value.message == "provider 'up' cut the response short"


@pytest.mark.asyncio
async def test_malformed_answer_is_a_bad_response() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTX/1.1 200 OK\r\n\r\n")
        return True

    async with upstream(answer) as up, client(up) as http:
        with pytest.raises(UpstreamBadResponseError, match=r"^provider 'up' sent a malformed HTTP response"):
            await post(http)
        await eventually(lambda: up.hung_up == 1)


@pytest.mark.asyncio
async def test_cancelled_request_drops_its_connection() -> None:
    release = asyncio.Event()
    async with upstream(held_until(release)) as up, client(up) as http:
        task = asyncio.create_task(post(http, b"1"))
        await eventually(lambda: len(up.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: up.hung_up == 1)
        release.set()
        assert (await post(http, b"2"))[2] == b"2"
        assert up.accepted == 2


# --- streams


@pytest.mark.asyncio
async def test_stream_chunks_arrive_as_they_are_sent() -> None:
    second = asyncio.Event()

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(STREAM_HEAD + chunked(b"data: 1\n\n"))
        await second.wait()
        writer.write(chunked(b"data: 2\n\n") + LAST_CHUNK)
        return True

    async with upstream(answer) as up, client(up) as http:
        stream = await within(http.open_stream("/chat/completions", BODY, timeout=TIMEOUT))
        chunks = stream.chunks()
        assert await within(anext(chunks)) == b"data: 1\n\n"  # before the server sends the second
        second.set()
        assert [chunk async for chunk in chunks] == [b"data: 2\n\n"]
        assert up.requests == [Seen(head_of(up, "POST", "/v1/chat/completions", len(BODY)), BODY, 0)]
        assert idle(http) == 1


@pytest.mark.asyncio
async def test_stream_silent_for_the_idle_timeout_is_a_timeout() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(STREAM_HEAD + chunked(b"data: 1\n\n"))
        await asyncio.Event().wait()
        return True

    async with upstream(answer) as up, client(up) as http:
        stream = await within(http.open_stream("/chat/completions", BODY, timeout=0.1))
        chunks = stream.chunks()
        assert await within(anext(chunks)) == b"data: 1\n\n"
        with pytest.raises(UpstreamTimeoutError) as caught:
            await within(anext(chunks))
        assert caught.value.message == "provider 'up' sent nothing for 0.1 s in the middle of a stream"
        await eventually(lambda: up.hung_up == 1)


@pytest.mark.asyncio
async def test_stream_head_not_within_the_timeout_is_a_timeout() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()
        return True

    async with upstream(answer) as up, client(up) as http:
        with pytest.raises(UpstreamTimeoutError, match=r"^provider 'up' timed out after 0\.1 s$"):
            await within(http.open_stream("/chat/completions", BODY, timeout=0.1))
        await eventually(lambda: up.hung_up == 1)


@pytest.mark.asyncio
async def test_stream_cut_mid_body_is_a_connection_error() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(STREAM_HEAD + chunked(b"data: 1\n\n"))
        return False

    async with upstream(answer) as up, client(up) as http:
        stream = await within(http.open_stream("/chat/completions", BODY, timeout=TIMEOUT))
        received = []
        with pytest.raises(UpstreamConnectionError, match=r"^provider 'up' cut the response short$"):
            async for chunk in stream.chunks():
                received.append(chunk)
        assert received == [b"data: 1\n\n"]


@pytest.mark.asyncio
async def test_stream_error_status_raises_the_matching_error_and_keeps_the_connection() -> None:
    answers = [
        reply(b'{"error":{"message":"slow down"}}', status="429 Too Many Requests", headers=("Retry-After: 7",)),
        reply(b'{"error":{"message":"overloaded"}}', status="503 Service Unavailable"),
        reply(b'{"error":{"message":"bad temperature","param":"temperature"}}', status="400 Bad Request"),
    ]

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(answers[len(up.requests) - 1])
        return True

    async with upstream(answer) as up, client(up) as http:
        with pytest.raises(UpstreamRateLimitError) as limited:
            await within(http.open_stream("/chat/completions", BODY, timeout=TIMEOUT))
        assert (limited.value.message, limited.value.retry_after) == ("provider 'up' answered 429: slow down", 7.0)
        with pytest.raises(UpstreamStatusError) as failed:
            await within(http.open_stream("/chat/completions", BODY, timeout=TIMEOUT))
        assert (failed.value.message, failed.value.upstream_status) == ("provider 'up' answered 503: overloaded", 503)
        with pytest.raises(UpstreamRejectedError) as rejected:
            await within(http.open_stream("/chat/completions", BODY, timeout=TIMEOUT))
        assert (rejected.value.message, rejected.value.status, rejected.value.param) == (
            "provider 'up' answered 400: bad temperature", 400, "temperature")
        assert (up.accepted, idle(http)) == (1, 1)


@pytest.mark.asyncio
async def test_stream_closed_early_drops_its_connection() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.connection == 0:
            writer.write(STREAM_HEAD + chunked(b"data: 1\n\n"))
            await asyncio.Event().wait()
        writer.write(reply())
        return True

    async with upstream(answer) as up, client(up) as http:
        stream = await within(http.open_stream("/chat/completions", BODY, timeout=TIMEOUT))
        chunks = stream.chunks()
        assert await within(anext(chunks)) == b"data: 1\n\n"
        await within(chunks.aclose())
        await eventually(lambda: up.hung_up == 1)
        assert (await post(http))[2] == OK
        assert up.accepted == 2


@pytest.mark.asyncio
async def test_stream_reader_that_lags_pauses_reading_and_loses_nothing() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    pieces = 32

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.body != b"stream":
            return await ok(seen, writer)
        writer.write(STREAM_HEAD)
        for _ in range(pieces):
            writer.write(chunked(piece))
            await writer.drain()
        writer.write(LAST_CHUNK)
        return True

    async with upstream(answer) as up, client(up) as http:
        stream = await within(http.open_stream("/chat/completions", b"stream", timeout=TIMEOUT))
        (conn,) = http._pool._all
        assert conn.transport is not None
        await eventually(lambda: not conn.transport.is_reading())  # type: ignore[union-attr]
        body = b"".join([chunk async for chunk in stream.chunks()])
        assert body == piece * pieces
        assert (await post(http))[2] == OK
        assert up.accepted == 1


# --- closing


@pytest.mark.asyncio
async def test_aclose_closes_idle_and_busy_connections_and_later_requests_fail() -> None:
    release = asyncio.Event()

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.body == b"held":
            await release.wait()
        writer.write(reply())
        return True

    async with upstream(answer) as up:
        http = HttpPool(f"http://127.0.0.1:{up.port}", name="up", headers={})
        busy = asyncio.create_task(post(http, b"held"))
        await eventually(lambda: len(up.requests) == 1)
        assert (await post(http))[2] == OK
        assert (up.accepted, idle(http)) == (2, 1)
        await within(http.aclose())
        with pytest.raises(UpstreamConnectionError, match=r"^provider 'up': the connection pool was closed$"):
            await within(busy)
        await eventually(lambda: up.hung_up == 2)
        with pytest.raises(UpstreamConnectionError, match=r"^provider 'up': the connection pool is closed$"):
            await post(http)
        assert (up.accepted, idle(http)) == (2, 0)


# --- TLS


@functools.cache
def certificate() -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made once per run."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = Path(tempfile.mkdtemp(prefix="labgate-tls-"))
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def server_tls() -> ssl.SSLContext:
    cert, key = certificate()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.asyncio
async def test_https_verifies_the_certificate_and_reuses_the_connection() -> None:
    trusted = ssl.create_default_context(cafile=str(certificate()[0]))
    system, pool_module.tls_context = pool_module.tls_context, lambda: trusted  # type: ignore[assignment]
    try:
        async with upstream(tls=server_tls()) as up, client(up, scheme="https", host="localhost") as http:
            assert (await post(http))[2] == OK
            assert (await post(http))[2] == OK
            assert up.accepted == 1
            assert up.requests[0].head.split(b"\r\n")[1] == f"host: localhost:{up.port}".encode()
    finally:
        pool_module.tls_context = system  # type: ignore[method-assign]


@pytest.mark.asyncio
async def test_https_rejects_an_untrusted_certificate() -> None:
    async with upstream(tls=server_tls()) as up, client(up, scheme="https", host="localhost") as http:
        with pytest.raises(UpstreamConnectionError, match="certificate verify failed"):
            await post(http)


# --- configuration


def test_host_header_leaves_out_the_default_port() -> None:
    http = HttpPool("https://api.example.com/v1/", name="x", headers={"x-api-key": "k"})
    assert http._message("POST", "/messages", b"{}") == (
        b"POST /v1/messages HTTP/1.1\r\nhost: api.example.com\r\ncontent-type: application/json\r\n"
        b"x-api-key: k\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\n{}")


@pytest.mark.parametrize(("base_url", "headers", "message"), [
    ("ftp://h/v1", {}, "provider 'x': base URL 'ftp://h/v1' is not an http:// or https:// URL"),
    ("http://h/v1", {"Content-Length": "1"}, "provider 'x': header 'Content-Length' is set by the HTTP client"),
    ("http://h/v1", {"x-a": "1\r\nx-b: 2"}, "provider 'x': a header name or value contains CR or LF"),
])
def test_bad_configuration_is_refused(base_url: str, headers: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        HttpPool(base_url, name="x", headers=headers)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("method", "body", "framing"), [
    ("POST", None, b"content-length: 0\r\n"),  # a POST without a body still says so
    ("HEAD", None, b""),
    ("GET", None, b""),
    ("GET", b"{}", b"content-length: 2\r\n"),
])
def test_a_body_or_its_absence_is_framed(method: str, body: bytes | None, framing: bytes) -> None:
    http = HttpPool("http://[::1]:8080/base/", name="x", headers={})
    assert (http.base_url, http.name) == ("http://[::1]:8080/base", "x")
    assert HttpPool("http://h/vX/", name="x", headers={}).base_url == "http://h/vX"  # only slashes are cut
    assert http._message(method, "/m", body) == (
        b"%s /base/m HTTP/1.1\r\nhost: [::1]:8080\r\ncontent-type: application/json\r\n"
        b"connection: keep-alive\r\n%s\r\n%s" % (method.encode(), framing, body or b""))


def test_a_header_with_a_lone_line_feed_is_refused() -> None:
    with pytest.raises(ValueError, match="contains CR or LF"):
        HttpPool("http://h/v1", name="x", headers={"x-a": "1\nx-b: 2"})


@pytest.mark.asyncio
async def test_extra_headers_go_on_requests_and_streams() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply() if seen.head.startswith(b"GET") else STREAM_HEAD + chunked(b"data: 1\n\n") + LAST_CHUNK)
        return True

    extra = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    async with upstream(answer) as up, client(up) as http:
        await within(http.request("GET", "/models", timeout=TIMEOUT, extra_headers=extra))
        stream = await within(http.open_stream("/chat/completions", BODY, timeout=TIMEOUT, extra_headers=extra))
        assert stream.where == "provider 'up'"
        assert [chunk async for chunk in stream.chunks()] == [b"data: 1\n\n"]
        assert [seen.head.count(extra) for seen in up.requests] == [1, 1]


@pytest.mark.asyncio
async def test_a_stream_error_body_in_pieces_and_a_3xx_are_errors() -> None:
    pieces = (b'{"error": {"message": ', b'"nope", "param": "n"}}')
    answers = [b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(pieces[0]),
               reply(b'{"error": {"message": "elsewhere"}}', status="300 Multiple Choices")]

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(answers[len(up.requests) - 1])
        if len(up.requests) == 1:  # the rest of the error body after the client has read the first piece
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(chunked(pieces[1]) + LAST_CHUNK)
        return True

    async with upstream(answer) as up, client(up) as http:
        with pytest.raises(UpstreamRejectedError) as rejected:
            await within(http.open_stream("/chat/completions", BODY, timeout=TIMEOUT))
        assert (rejected.value.message, rejected.value.param) == ("provider 'up' answered 400: nope", "n")
        with pytest.raises(UpstreamRejectedError) as redirected:
            await within(http.open_stream("/chat/completions", BODY, timeout=TIMEOUT))
        assert redirected.value.message == "provider 'up' answered 300: elsewhere"


@pytest.mark.asyncio
async def test_waiting_for_a_connection_counts_against_a_streams_timeout() -> None:
    release = asyncio.Event()
    async with upstream(held_until(release)) as up, client(up, max_connections=1) as http:
        first = asyncio.create_task(post(http, b"1"))
        await eventually(lambda: len(up.requests) == 1)
        with pytest.raises(DeploymentBusyError):
            await within(http.open_stream("/chat/completions", BODY, timeout=0.1))
        release.set()
        assert (await within(first))[2] == b"1"


@pytest.mark.asyncio
async def test_a_stream_error_body_that_stalls_ends_at_the_deadline() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 500 Oops\r\ncontent-length: 100\r\n\r\n{\"error\"")  # and nothing more
        return True

    async with upstream(answer) as up, client(up) as http:
        with pytest.raises(UpstreamTimeoutError):
            await within(http.open_stream("/chat/completions", BODY, timeout=0.3))


@pytest.mark.asyncio
async def test_an_upstream_echoing_the_configured_key_has_it_masked() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply(b'{"error": {"message": "key plainwordsecret123 revoked"}}', status="401 Unauthorized"))
        return True

    async with upstream(answer) as up:
        http = HttpPool(f"http://127.0.0.1:{up.port}/v1", name="up", headers={"api-key": "plainwordsecret123"})
        try:
            status, headers, body = await within(http.request("GET", "/models", timeout=TIMEOUT))
            assert http.error_for(status, body, headers).message == "provider 'up' answered 401: key *** revoked"
        finally:
            await within(http.aclose())


@pytest.mark.asyncio
async def test_max_response_bytes_reaches_the_pool() -> None:
    async with upstream() as up:
        http = HttpPool(f"http://127.0.0.1:{up.port}/v1", name="up", headers={}, max_response_bytes=len(OK) - 1)
        try:
            with pytest.raises(UpstreamBadResponseError, match="max_response_bytes"):
                await within(http.request("GET", "/models", timeout=TIMEOUT))
        finally:
            await within(http.aclose())


@pytest.mark.asyncio
async def test_fetch_is_one_get_with_its_query() -> None:
    async with upstream() as up:
        assert await within(fetch(f"http://127.0.0.1:{up.port}/v1/models?limit=5", timeout=TIMEOUT)) == (200, OK)
        assert await within(fetch(f"http://127.0.0.1:{up.port}", timeout=TIMEOUT)) == (200, OK)
        assert [seen.head.split(b"\r\n", 1)[0] for seen in up.requests] == [
            b"GET /v1/models?limit=5 HTTP/1.1", b"GET / HTTP/1.1"]
        assert up.accepted == 2  # a fresh connection each time
    with pytest.raises(UpstreamConnectionError, match="provider 'probe'"):
        await within(fetch(f"http://127.0.0.1:{up.port}/", timeout=TIMEOUT))


# --- the same cases on uvloop

UVLOOP_CASES = [
    test_request_is_one_message_and_the_answer_is_read_by_content_length,
    test_chunked_answer_is_dechunked,
    test_answer_without_length_ends_at_the_close_and_its_connection_is_not_reused,
    test_keep_alive_serves_requests_and_streams_on_one_connection,
    test_connection_close_answer_is_not_reused,
    test_idle_connection_the_server_closed_is_not_handed_out,
    test_idempotent_request_is_retried_once_when_a_reused_connection_drops_it,
    test_the_retry_goes_on_a_fresh_connection_when_two_idle_ones_went_stale,
    test_a_retry_at_the_connection_limit_waits_and_opens_a_new_connection_in_a_freed_slot,
    test_post_is_not_retried_when_a_reused_connection_drops_it,
    test_max_connections_queues_further_requests_first_come_first_served,
    test_waiting_for_a_connection_counts_against_the_timeout,
    test_no_answer_within_the_timeout_is_a_timeout_and_the_connection_is_dropped,
    test_refused_port_is_a_connection_error_naming_the_provider,
    test_cut_mid_body_is_a_connection_error,
    test_cancelled_request_drops_its_connection,
    test_stream_chunks_arrive_as_they_are_sent,
    test_stream_silent_for_the_idle_timeout_is_a_timeout,
    test_stream_reader_that_lags_pauses_reading_and_loses_nothing,
    test_aclose_closes_idle_and_busy_connections_and_later_requests_fail,
    test_https_verifies_the_certificate_and_reuses_the_connection,
]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda case: case.__name__.removeprefix("test_"))
def test_under_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(case())
