"""The HTTP/1.1 server, over real sockets on 127.0.0.1.

Every test is a fixture-free coroutine so the same cases run twice: on the
default asyncio loop (``@pytest.mark.asyncio``) and on uvloop
(``test_under_uvloop`` at the end). Every await has a timeout, so a bug fails
instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import aiohttp
import httptools
import orjson
import pytest
import uvloop

from labgate.errors import (
    BodyTooLargeError,
    ConnectionLimitError,
    HeaderTooLargeError,
    InternalError,
    LabgateError,
    RequestError,
    RequestTimeoutError,
)
from labgate.server.connection import Connection
from labgate.server.http import HttpServer, Request, Response, ServerLimits

T = TypeVar("T")
TIMEOUT = 5.0
DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
JSON = ("content-type", "application/json")
SSE = ("content-type", "text/event-stream")


async def within(awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


def error_response(exc: LabgateError, headers: Mapping[str, str]) -> Response:
    return Response(exc.status, [JSON], error_body(exc))


def error_body(exc: LabgateError) -> bytes:
    return orjson.dumps({"error": {"message": exc.message, "code": exc.code}})


async def echo(request: Request) -> Response:
    return Response(200, [JSON], orjson.dumps({
        "method": request.method, "path": request.path, "query": request.query,
        "headers": request.headers, "body": request.body.decode(), "client": request.client,
    }))


async def text(request: Request) -> Response:
    return Response(200, [("content-type", "text/plain")], f"{request.method} {request.path}".encode())


_clients: dict[int, list[asyncio.StreamWriter]] = {}  # by server port: closed when the server stops


@contextlib.asynccontextmanager
async def serving(handler: Callable[[Request], Awaitable[Response]], *, max_body_bytes: int | None = 1024,
                  **options: Any) -> AsyncIterator[tuple[HttpServer, int]]:
    if "limits" in options:
        max_body_bytes = None  # the limits say it
    options.setdefault("error_response", error_response)
    server = HttpServer(handler, max_body_bytes=max_body_bytes, **options)
    port = await within(server.start("127.0.0.1", 0))
    try:
        yield server, port
    finally:
        await within(server.shutdown(1.0))
        for writer in _clients.pop(port, []):
            writer.close()
            with contextlib.suppress(OSError):
                await within(writer.wait_closed())


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
    _clients.setdefault(port, []).append(writer)
    return reader, writer


@contextlib.contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Records from our server's logger and from asyncio's (unretrieved task errors, failed sends)."""
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    capture = Capture(logging.DEBUG)
    loggers = [logging.getLogger("labgate.server"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(capture)


@dataclass
class Reply:
    status: str
    headers: list[tuple[str, str]]  # in order, without date
    body: bytes


async def read_reply(reader: asyncio.StreamReader, *, method: str = "GET") -> Reply:
    raw = await within(reader.readuntil(b"\r\n\r\n"))
    status, *lines = raw[:-4].decode("latin-1").split("\r\n")
    fields = [tuple(line.split(": ", 1)) for line in lines]
    dates = [value for name, value in fields if name == "date"]
    assert len(dates) == 1 and DATE.fullmatch(dates[0]), fields
    headers = [(name, value) for name, value in fields if name != "date"]
    framing = dict(headers)
    if method == "HEAD" or status.split()[1] in ("204", "304"):
        body = b""
    elif "content-length" in framing:
        body = await within(reader.readexactly(int(framing["content-length"])))
    elif framing.get("transfer-encoding") == "chunked":
        body = b"".join(await read_chunks(reader))
    else:
        body = await within(reader.read())  # delimited by the close
    return Reply(status, headers, body)


async def read_chunks(reader: asyncio.StreamReader) -> list[bytes]:
    chunks: list[bytes] = []
    while True:
        size = int(await within(reader.readuntil(b"\r\n")), 16)
        data = await within(reader.readexactly(size + 2))
        assert data[-2:] == b"\r\n"
        if size == 0:
            return chunks
        chunks.append(data[:-2])


async def assert_closed(reader: asyncio.StreamReader) -> None:
    assert await within(reader.read()) == b""


def json_reply(data: Any, status: str = "HTTP/1.1 200 OK", extra: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = orjson.dumps(data)
    return Reply(status, [JSON, ("content-length", str(len(body))), *extra], body)


def error_reply(exc: LabgateError) -> Reply:
    body = error_body(exc)
    status = f"HTTP/1.1 {exc.status} {HTTPStatus(exc.status).phrase}"
    return Reply(status, [JSON, ("content-length", str(len(body))), ("connection", "close")], body)


def text_reply(body: bytes, extra: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply("HTTP/1.1 200 OK", [("content-type", "text/plain"), ("content-length", str(len(body))), *extra],
                 body)


async def eventually(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 (the server has no event for this)
            await asyncio.sleep(0.005)
    await within(poll())


class Chunks:
    """A response stream that is not a generator (nothing but the server closes it) and says when it was."""

    def __init__(self, chunks: list[bytes], log: list[str]) -> None:
        self.chunks, self.log = chunks, log

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    async def aclose(self) -> None:
        self.log.append(f"closed with {len(self.chunks)} left")  # e.g. its upstream connection goes back


# --- requests and responses


@pytest.mark.asyncio
async def test_get_builds_the_request_and_answers_with_content_length() -> None:
    async with serving(echo) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /v1/models?limit=2&q=a%20b HTTP/1.1\r\nHost: t\r\nX-Multi: a\r\n"
                     b"x-multi: b\r\nUser-Agent: ua/1  \r\n\r\n")
        assert await read_reply(reader) == json_reply({
            "method": "GET", "path": "/v1/models", "query": "limit=2&q=a%20b",
            "headers": {"host": "t", "x-multi": "a, b", "user-agent": "ua/1"}, "body": "", "client": "127.0.0.1",
        })
        writer.close()


@pytest.mark.asyncio
async def test_header_values_lose_only_blanks_at_their_end() -> None:
    async with serving(echo) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: vX\r\nX-B: v\xa0\r\nX-C: v \t \r\n\r\n")
        assert await read_reply(reader) == json_reply({
            "method": "GET", "path": "/", "query": "",
            "headers": {"host": "t", "x-a": "vX", "x-b": "v\xa0", "x-c": "v"}, "body": "", "client": "127.0.0.1",
        })
        writer.close()


@pytest.mark.asyncio
async def test_post_with_aiohttp_reads_the_body() -> None:
    async with serving(echo) as (_, port), aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", data=b'{"model": "m"}',
            headers={"content-type": "application/json"},
            skip_auto_headers=("user-agent", "accept", "accept-encoding")) as response:
        assert (response.status, response.headers["content-type"], await within(response.json())) == (
            200, "application/json", {
                "method": "POST", "path": "/v1/chat/completions", "query": "",
                "headers": {"host": f"127.0.0.1:{port}", "content-type": "application/json",
                            "content-length": "14"},
                "body": '{"model": "m"}', "client": "127.0.0.1",
            })


@pytest.mark.asyncio
async def test_absolute_form_target_gives_path_and_query() -> None:
    async with serving(text) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /a/b")
        writer.close()


@pytest.mark.asyncio
async def test_keep_alive_answers_several_requests_on_one_connection() -> None:
    async with serving(text) as (_, port):
        reader, writer = await connect(port)
        for path in ("/one", "/two", "/three"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert await read_reply(reader) == text_reply(f"GET {path}".encode())
        writer.close()


@pytest.mark.asyncio
async def test_aiohttp_reuses_one_connection() -> None:
    events: list[str] = []

    async def on_create(*_: Any) -> None:
        events.append("new")

    async def on_reuse(*_: Any) -> None:
        events.append("reused")

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    async with serving(text) as (_, port), aiohttp.ClientSession(trace_configs=[trace]) as session:
        for path in ("/a", "/b", "/c"):
            async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                assert (response.status, await within(response.read())) == (200, f"GET {path}".encode())
    assert events == ["new", "reused", "reused"]


@pytest.mark.asyncio
async def test_pipelined_requests_are_answered_in_order() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            await asyncio.sleep(0.05)
        return Response(200, [("content-type", "text/plain")], f"{request.path} {request.body.decode()}".encode())

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                     b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        assert [await read_reply(reader) for _ in range(3)] == [
            text_reply(b"/slow "), text_reply(b"/post hello"), text_reply(b"/fast ")]
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(100)))
        assert [await read_reply(reader) for _ in range(100)] == [text_reply(b"/%d " % i) for i in range(100)]
        writer.close()


@pytest.mark.asyncio
async def test_chunked_request_body_is_decoded() -> None:
    async def handler(request: Request) -> Response:
        return Response(200, [("content-type", "text/plain")], request.body)

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await within(writer.drain())
        await asyncio.sleep(0.01)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"hello world")
        writer.close()


@pytest.mark.asyncio
async def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    async with serving(echo) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        assert await within(reader.readexactly(25)) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        assert await read_reply(reader) == json_reply({
            "method": "POST", "path": "/e", "query": "",
            "headers": {"host": "t", "expect": "100-continue", "content-length": "5"},
            "body": "hello", "client": "127.0.0.1",
        })
        writer.close()


@pytest.mark.asyncio
async def test_expect_100_continue_with_aiohttp() -> None:
    async with serving(text) as (_, port), aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/x", data=b"body", expect100=True) as response:
        assert (response.status, await within(response.read())) == (200, b"POST /x")


@pytest.mark.asyncio
async def test_expect_100_continue_waits_for_the_answers_owed_before_it() -> None:
    release = asyncio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            await release.wait()
        return Response(200, [("content-type", "text/plain")], f"{request.path} {request.body.decode()}".encode())

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        await asyncio.sleep(0.05)
        release.set()
        assert await read_reply(reader) == text_reply(b"/slow ")
        assert await within(reader.readexactly(25)) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"ok")
        assert await read_reply(reader) == text_reply(b"/e ok")
        writer.close()


@pytest.mark.asyncio
async def test_head_gets_the_length_but_no_body() -> None:
    async with serving(text) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /g HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader, method="HEAD") == Reply(
            "HTTP/1.1 200 OK", [("content-type", "text/plain"), ("content-length", "7")], b"")
        assert await read_reply(reader) == text_reply(b"GET /g")
        writer.close()


@pytest.mark.asyncio
async def test_handler_framing_headers_are_replaced_and_connection_close_honoured() -> None:
    async def handler(request: Request) -> Response:
        return Response(201, [("Content-Length", "999"), ("x-a", "1"), ("Connection", "close")], b"made")

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == Reply(
            "HTTP/1.1 201 Created", [("x-a", "1"), ("content-length", "4"), ("connection", "close")], b"made")
        await assert_closed(reader)


@pytest.mark.asyncio
async def test_no_content_has_neither_length_nor_body() -> None:
    async def handler(request: Request) -> Response:
        return Response(204, [("x-a", "1")], b"ignored")

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"DELETE /x HTTP/1.1\r\nHost: t\r\n\r\nGET /y HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == Reply("HTTP/1.1 204 No Content", [("x-a", "1")], b"")
        assert await read_reply(reader) == Reply("HTTP/1.1 204 No Content", [("x-a", "1")], b"")
        writer.close()


@pytest.mark.asyncio
async def test_client_connection_close_is_honoured() -> None:
    async with serving(text) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /x", (("connection", "close"),))
        await assert_closed(reader)


@pytest.mark.asyncio
async def test_http_1_0_closes_unless_keep_alive_is_asked() -> None:
    async with serving(text) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /a HTTP/1.0\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /a", (("connection", "close"),))
        await assert_closed(reader)

        reader, writer = await connect(port)
        writer.write(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /b", (("connection", "keep-alive"),))
        writer.write(b"GET /c HTTP/1.0\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /c", (("connection", "close"),))
        await assert_closed(reader)


# --- errors


@pytest.mark.asyncio
async def test_too_large_content_length_gets_413_without_reading_the_body() -> None:
    calls: list[Request] = []

    async def handler(request: Request) -> Response:
        calls.append(request)
        return await text(request)

    async with serving(handler, max_body_bytes=1024) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
        assert await read_reply(reader) == error_reply(
            BodyTooLargeError("The request body is 1000000 bytes; the limit is 1024."))
        await assert_closed(reader)
        # the limit is inclusive
        reader, writer = await connect(port)
        writer.write(b"POST /fits HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024)
        assert await read_reply(reader) == text_reply(b"POST /fits")
        writer.close()
    assert [r.path for r in calls] == ["/fits"]


@pytest.mark.asyncio
async def test_too_large_content_length_with_expect_gets_413_not_100() -> None:
    async with serving(text, max_body_bytes=10) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
        assert await read_reply(reader) == error_reply(
            BodyTooLargeError("The request body is 11 bytes; the limit is 10."))
        await assert_closed(reader)


@pytest.mark.asyncio
async def test_chunked_body_growing_past_the_limit_gets_413() -> None:
    async with serving(text, max_body_bytes=1024) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3e8\r\n" + b"x" * 1000 + b"\r\n" + b"64\r\n" + b"y" * 100 + b"\r\n")
        assert await read_reply(reader) == error_reply(
            BodyTooLargeError("The request body exceeds the limit of 1024 bytes."))
        await assert_closed(reader)


@pytest.mark.asyncio
async def test_malformed_request_gets_400_after_the_answers_owed_before_it() -> None:
    bad = b"GET /b HTTP/1.1\r\nBad Header Line\r\n\r\n"
    with pytest.raises(httptools.HttpParserError) as parsed:
        httptools.HttpRequestParser(object()).feed_data(bad)
    async with serving(text) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n" + bad)
        assert await read_reply(reader) == text_reply(b"GET /a")
        assert await read_reply(reader) == error_reply(RequestError(f"Malformed HTTP request: {parsed.value}."))
        await assert_closed(reader)


@pytest.mark.asyncio
async def test_a_bug_while_parsing_gets_the_500_envelope_and_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parser callback that fails unexpectedly (here the target's split, broken on purpose)."""
    import labgate.server.connection

    def broken(url: bytes) -> tuple[str, str]:
        raise RuntimeError("split broke")

    monkeypatch.setattr(labgate.server.connection, "split_target", broken)
    with captured_logs() as records:
        async with serving(text) as (_, port):
            reader, writer = await connect(port)
            writer.write(b"GET http://t/x HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await read_reply(reader) == error_reply(InternalError("internal error"))
            await assert_closed(reader)
    assert [(r.levelno, r.getMessage(), repr(r.exc_info[1] if r.exc_info else None)) for r in records] == [
        (logging.ERROR, "failed to parse a request", "RuntimeError('split broke')")]


@pytest.mark.asyncio
async def test_an_error_renderer_that_returns_a_stream_is_logged_and_the_client_gets_no_answer() -> None:
    unread: list[str] = []

    def streaming_errors(exc: LabgateError, headers: Mapping[str, str]) -> Response:
        return Response(exc.status, [JSON], stream=Chunks([error_body(exc)], unread))

    with captured_logs() as records:
        async with serving(text, error_response=streaming_errors, max_body_bytes=10) as (_, port):
            reader, writer = await connect(port)
            writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert await within(reader.read()) == b""
    assert [(r.levelno, r.getMessage(), repr(r.exc_info[1] if r.exc_info else None)) for r in records] == [
        (logging.WARNING, "a request from 127.0.0.1 was refused with 413 (server.max_body_bytes)", "None"),
        (logging.ERROR, "failed to render a 413 error", "TypeError('error_response must return a whole body')")]


@pytest.mark.asyncio
@pytest.mark.parametrize("shutting_down", [False, True])
async def test_after_an_error_answer_the_body_still_sent_is_drained_until_the_client_closes(
        shutting_down: bool) -> None:
    """Also while a shutdown waits for another connection's answer: a lingering connection is not idle."""
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        started.set()
        await release.wait()
        return await text(request)

    async with serving(handler, max_body_bytes=10) as (server, port):
        reader, writer = await connect(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n")
        assert await read_reply(reader) == error_reply(
            BodyTooLargeError("The request body is 1048576 bytes; the limit is 10."))
        assert await within(reader.read()) == b""  # the server half-closed, and reads on
        if shutting_down:
            slow_reader, slow_writer = await connect(port)
            slow_writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            await within(started.wait())
            shutdown = asyncio.create_task(server.shutdown(5.0))
            await eventually(lambda: server.closing)  # idle connections are closed by now
        for _ in range(16):
            writer.write(b"x" * 65536)  # the body it had begun to send: taken in, not met with a reset
            await within(writer.drain())
        writer.write_eof()
        await eventually(lambda: len(server.connections) == int(shutting_down))  # the slow one stays
        if shutting_down:
            release.set()
            assert await read_reply(slow_reader) == text_reply(b"GET /slow", (("connection", "close"),))
            await within(shutdown)


@pytest.mark.asyncio
async def test_a_client_that_stays_after_an_error_answer_is_cut_off_after_the_linger(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import labgate.server.connection

    monkeypatch.setattr(labgate.server.connection, "_LINGER_S", 0.1)
    async with serving(text, max_body_bytes=10) as (server, port):
        reader, writer = await connect(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n")
        assert await read_reply(reader) == error_reply(
            BodyTooLargeError("The request body is 11 bytes; the limit is 10."))
        assert await within(reader.read()) == b""
        await eventually(lambda: not server.connections)  # the client never closed its side


@pytest.mark.asyncio
async def test_the_shutdown_cuts_off_a_connection_lingering_after_an_error_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import labgate.server.connection

    monkeypatch.setattr(labgate.server.connection, "_LINGER_S", 60.0)  # only the shutdown can end it here
    async with serving(text, max_body_bytes=10) as (server, port):
        reader, writer = await connect(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n")
        assert await read_reply(reader) == error_reply(
            BodyTooLargeError("The request body is 11 bytes; the limit is 10."))
        await within(server.shutdown(1.0))
        await eventually(lambda: not server.connections)


@pytest.mark.asyncio
async def test_header_section_over_the_limit_gets_431() -> None:
    too_large = HeaderTooLargeError("The request's header section is too large.")
    async with serving(text, max_header_bytes=1024) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 1100 + b"\r\n\r\n")
        assert await read_reply(reader) == error_reply(too_large)
        await assert_closed(reader)

        # a header line that never ends is cut off too, though the parser has not handed it over yet
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nX-Endless: ")
        for _ in range(5):
            await within(writer.drain())
            await asyncio.sleep(0.02)
            writer.write(b"v" * 1000)
        assert await read_reply(reader) == error_reply(too_large)
        await assert_closed(reader)


@pytest.mark.asyncio
async def test_handler_exception_gets_the_500_envelope_and_is_logged_once() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("secret detail")
        return await text(request)

    with captured_logs() as records:
        async with serving(handler) as (_, port):
            reader, writer = await connect(port)
            writer.write(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
            body = error_body(InternalError("internal error"))
            assert await read_reply(reader) == Reply(
                "HTTP/1.1 500 Internal Server Error", [JSON, ("content-length", str(len(body)))], body)
            writer.write(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection is still good
            assert await read_reply(reader) == text_reply(b"GET /after")
            writer.close()
    assert [(r.name, r.levelno, r.getMessage(), repr(r.exc_info[1] if r.exc_info else None)) for r in records] == [
        ("labgate.server", logging.ERROR, "unhandled error answering GET /boom", "RuntimeError('secret detail')")]


@pytest.mark.asyncio
async def test_invalid_response_headers_get_the_500_envelope() -> None:
    async def handler(request: Request) -> Response:
        return Response(200, [("x-injected", "a\r\nset-cookie: evil")], b"no")

    with captured_logs() as records:
        async with serving(handler) as (_, port):
            reader, writer = await connect(port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            body = error_body(InternalError("internal error"))
            assert await read_reply(reader) == Reply(
                "HTTP/1.1 500 Internal Server Error", [JSON, ("content-length", str(len(body)))], body)
            writer.close()
    assert [(r.name, r.getMessage()) for r in records] == [("labgate.server", "unhandled error answering GET /")]


@pytest.mark.asyncio
async def test_the_500_envelope_keeps_the_requests_connection_handling() -> None:
    eof_seen = asyncio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/d":
            await eof_seen.wait()
        raise RuntimeError("broke")

    body = error_body(InternalError("internal error"))
    status = "HTTP/1.1 500 Internal Server Error"
    with captured_logs():
        async with serving(handler) as (_, port):
            reader, writer = await connect(port)
            writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert await read_reply(reader) == Reply(
                status, [JSON, ("content-length", str(len(body))), ("connection", "close")], body)
            await assert_closed(reader)

            reader, writer = await connect(port)
            writer.write(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert await read_reply(reader) == Reply(
                status, [JSON, ("content-length", str(len(body))), ("connection", "keep-alive")], body)
            writer.write(b"HEAD /c HTTP/1.0\r\n\r\n")  # still open; a HEAD's 500 has no body
            assert await read_reply(reader, method="HEAD") == Reply(
                status, [JSON, ("content-length", str(len(body))), ("connection", "close")], b"")
            await assert_closed(reader)

            reader, writer = await connect(port)
            writer.write(b"GET /d HTTP/1.1\r\nHost: t\r\n\r\n")
            writer.write_eof()  # half-closed: no more requests will come
            assert await within(reader.readexactly(25)) == b"HTTP/1.1 100 Continue\r\n\r\n"  # the probe
            eof_seen.set()
            assert await read_reply(reader) == Reply(
                status, [JSON, ("content-length", str(len(body))), ("connection", "close")], body)
            await assert_closed(reader)


@pytest.mark.asyncio
async def test_a_stream_whose_head_cannot_be_made_is_closed() -> None:
    closed: list[str] = []

    async def handler(request: Request) -> Response:
        return Response(200, [("x-bad", "a\r\nb")], stream=Chunks([b"never read"], closed))

    with captured_logs() as records:
        async with serving(handler) as (_, port):
            reader, writer = await connect(port)
            writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            body = error_body(InternalError("internal error"))
            assert await read_reply(reader) == Reply(
                "HTTP/1.1 500 Internal Server Error", [JSON, ("content-length", str(len(body)))], body)
            writer.close()
    assert (closed, [r.getMessage() for r in records]) == (
        ["closed with 1 left"], ["unhandled error answering GET /s"])


# --- streams


@pytest.mark.asyncio
async def test_stream_chunks_go_out_as_they_are_produced() -> None:
    release = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await release.wait()
        yield b""  # nothing to send: no empty HTTP chunk either
        yield b"data: second\n\n"

    async def handler(request: Request) -> Response:
        return Response(200, [SSE], stream=chunks()) if request.path == "/s" else await text(request)

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"POST /s HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await within(reader.readuntil(b"\r\n\r\n"))
        assert re.sub(rb"date: [^\r]*\r\n", b"", head) == (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        first = b"d\r\ndata: first\n\n\r\n"
        assert await within(reader.readexactly(len(first))) == first
        assert not release.is_set()
        release.set()
        rest = b"e\r\ndata: second\n\n\r\n0\r\n\r\n"
        assert await within(reader.readexactly(len(rest))) == rest
        writer.write(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /after")
        writer.close()


@pytest.mark.asyncio
async def test_a_client_that_half_closes_mid_stream_gets_the_rest_without_an_interim_answer() -> None:
    """Once the head is out, a 1xx would land inside the body. When the EOF has been taken in is private
    state (``_stopped``): nothing on the wire says it before the rest of the body."""
    release = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await release.wait()
        yield b"data: second\n\n"

    async def handler(request: Request) -> Response:
        return Response(200, [SSE], stream=chunks())

    async with serving(handler) as (server, port):
        reader, writer = await connect(port)
        writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        await within(reader.readuntil(b"\r\n\r\n"))
        first = b"d\r\ndata: first\n\n\r\n"
        assert await within(reader.readexactly(len(first))) == first
        writer.write_eof()
        (connection,) = server.connections
        await eventually(lambda: connection._stopped)
        release.set()
        assert await within(reader.read()) == b"e\r\ndata: second\n\n\r\n0\r\n\r\n"


@pytest.mark.asyncio
async def test_stream_with_aiohttp_client_sees_the_first_chunk_early() -> None:
    release = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"one"
        await release.wait()
        yield b"two"

    async def handler(request: Request) -> Response:
        return Response(200, [SSE], stream=chunks())

    async with serving(handler) as (_, port), aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/s") as response:
        assert (response.status, response.headers["transfer-encoding"]) == (200, "chunked")
        assert await within(response.content.readexactly(3)) == b"one"
        release.set()
        assert await within(response.read()) == b"two"


@pytest.mark.asyncio
async def test_stream_with_content_length_and_to_http_1_0_is_not_chunked() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    async def handler(request: Request) -> Response:
        headers = [("content-length", request.path[1:])] if request.path != "/any" else []
        return Response(200, headers, stream=chunks())

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /4 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == Reply("HTTP/1.1 200 OK", [("content-length", "4")], b"abcd")
        # a stream that breaks its declared length cannot be framed: the connection closes after it
        writer.write(b"GET /3 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == Reply("HTTP/1.1 200 OK", [("content-length", "3")], b"abc")
        await assert_closed(reader)
        reader, writer = await connect(port)
        writer.write(b"GET /6 HTTP/1.1\r\nHost: t\r\n\r\n")
        await within(reader.readuntil(b"\r\n\r\n"))
        assert await within(reader.read()) == b"abcd"
        writer.close()
        reader, writer = await connect(port)
        writer.write(b"GET /any HTTP/1.0\r\n\r\n")
        assert await read_reply(reader) == Reply("HTTP/1.1 200 OK", [("connection", "close")], b"abcd")


@pytest.mark.asyncio
async def test_stream_failing_after_the_head_is_logged_and_the_connection_closed() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("upstream broke")

    async def handler(request: Request) -> Response:
        return Response(200, [SSE], stream=chunks())

    with captured_logs() as records:
        async with serving(handler) as (server, port):
            reader, writer = await connect(port)
            writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            await within(reader.readuntil(b"\r\n\r\n"))
            assert await within(reader.read()) == b"7\r\npartial\r\n"  # no terminator: the client sees the break
            await eventually(lambda: server.inflight == 0)
    assert [(r.name, r.getMessage(), repr(r.exc_info[1] if r.exc_info else None)) for r in records] == [
        ("labgate.server", "response stream failed after the head was sent", "RuntimeError('upstream broke')")]


@pytest.mark.asyncio
async def test_large_bodies_arrive_whole_through_flow_control() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield piece

    async def handler(request: Request) -> Response:
        if request.path == "/stream":
            return Response(200, [], stream=chunks())
        return Response(200, [], piece * 32)

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\nGET /whole HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.1)  # read nothing for a while: the server must pause, then resume
        streamed = await read_reply(reader)
        assert (streamed.status, streamed.headers, streamed.body == piece * 64) == (
            "HTTP/1.1 200 OK", [("transfer-encoding", "chunked")], True)
        whole = await read_reply(reader)
        assert (whole.status, whole.headers, whole.body == piece * 32) == (
            "HTTP/1.1 200 OK", [("content-length", str(len(piece) * 32))], True)
        writer.close()


@pytest.mark.asyncio
async def test_client_that_reads_nothing_is_cut_after_the_timeout() -> None:
    closed = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 65536
        finally:
            closed.set()

    async def handler(request: Request) -> Response:
        return Response(200, [], stream=chunks())

    with captured_logs() as records:
        async with serving(handler, keepalive_timeout=0.3) as (server, port):
            reader, writer = await connect(port)
            writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            await within(reader.readuntil(b"\r\n\r\n"))
            await within(closed.wait())
            await eventually(lambda: server.inflight == 0)
    assert records == []


@pytest.mark.asyncio
async def test_client_disconnect_mid_stream_closes_the_iterator() -> None:
    # a client's EOF may be a half-close, so a stream goes on until its next chunk meets the reset
    closed, release = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await release.wait()
            yield b"second"
            await asyncio.Event().wait()
            yield b"never"
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise
        finally:
            closed.set()

    async def handler(request: Request) -> Response:
        return Response(200, [SSE], stream=chunks())

    with captured_logs() as records:
        async with serving(handler) as (server, port):
            reader, writer = await connect(port)
            writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            await within(reader.readuntil(b"\r\n\r\n"))
            assert await within(reader.readexactly(10)) == b"5\r\nfirst\r\n"
            assert server.inflight == 1
            writer.close()
            await asyncio.sleep(0.05)
            release.set()
            await within(closed.wait())
            await eventually(lambda: server.inflight == 0)
    assert (seen, records) == (["CancelledError"], [])


@pytest.mark.asyncio
async def test_client_disconnect_while_writes_are_paused_closes_the_iterator() -> None:
    closed = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 65536
        finally:
            closed.set()

    async def handler(request: Request) -> Response:
        return Response(200, [], stream=chunks())

    with captured_logs() as records:
        async with serving(handler) as (server, port):
            reader, writer = await connect(port)
            writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            await within(reader.readuntil(b"\r\n\r\n"))
            await asyncio.sleep(0.1)  # the client reads nothing: the server's buffers fill, writing pauses
            assert not closed.is_set()
            writer.transport.abort()
            await within(closed.wait())
            await eventually(lambda: server.inflight == 0)
    assert records == []


@pytest.mark.asyncio
async def test_a_client_that_leaves_after_sending_more_than_its_last_request_is_still_noticed() -> None:
    """Bytes after a ``Connection: close`` request are dropped unread; reading goes on, so the close is seen."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return await text(request)

    with captured_logs() as records:
        async with serving(handler) as (server, port):
            _, writer = await connect(port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            await within(started.wait())
            writer.write(b"GET /more HTTP/1.1\r\nHost: t\r\n\r\n")  # a packet of its own, after the last request
            await within(writer.drain())
            await asyncio.sleep(0.05)
            writer.close()
            await within(cancelled.wait())
            await eventually(lambda: server.inflight == 0)
    assert records == []


@pytest.mark.asyncio
async def test_client_disconnect_cancels_a_slow_handler() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return await text(request)

    with captured_logs() as records:
        async with serving(handler) as (server, port):
            _, writer = await connect(port)
            writer.write(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            await within(started.wait())
            assert server.inflight == 1
            writer.close()
            await within(cancelled.wait())
            await eventually(lambda: server.inflight == 0)
    assert records == []


# --- lifecycle


@pytest.mark.asyncio
async def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    async with serving(text, keepalive_timeout=0.2) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /a")
        started = time.monotonic()
        await asyncio.sleep(0.1)
        writer.write(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")  # activity restarts the clock
        assert await read_reply(reader) == text_reply(b"GET /b")
        await assert_closed(reader)
        assert 0.25 < time.monotonic() - started < 2


@pytest.mark.asyncio
async def test_a_connection_that_never_sends_a_byte_is_closed_idle_without_an_answer() -> None:
    limits = ServerLimits(max_body_bytes=1024, request_read_timeout=0.1, keepalive_timeout=0.3)
    async with serving(text, limits=limits) as (_, port):
        reader, _ = await connect(port)
        assert await within(reader.read()) == b""  # no request began: no 408, only the idle close


@pytest.mark.asyncio
async def test_a_connection_idle_after_an_answer_longer_than_the_timeout_is_closed() -> None:
    async def handler(request: Request) -> Response:
        await asyncio.sleep(1.0)  # the timer fires meanwhile and finds nothing to enforce
        return await text(request)

    async with serving(handler, keepalive_timeout=0.5) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /long HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /long")
        await assert_closed(reader)  # idle from then on: closed after the keep-alive timeout


@pytest.mark.asyncio
async def test_a_request_begun_during_a_long_answer_is_on_the_clock() -> None:
    """Its read deadline runs while the answer before it is made, even once the timer has fired and found
    nothing to enforce: past it, the rest of its head is not read and it gets its 408."""
    release = asyncio.Event()

    async def handler(request: Request) -> Response:
        await release.wait()
        return await text(request)

    limits = ServerLimits(max_body_bytes=1024, request_read_timeout=0.3, keepalive_timeout=30.0)
    async with serving(handler, limits=limits) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /long HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.6)  # the timer fires meanwhile, while only the answer is being made
        writer.write(b"GET /late HTTP/1.1\r\n")
        await asyncio.sleep(2.0)  # well past the read deadline of /late
        writer.write(b"Host: t\r\n\r\n")
        await asyncio.sleep(0.1)
        release.set()
        assert await read_reply(reader) == text_reply(b"GET /long")
        assert await read_reply(reader) == error_reply(
            RequestTimeoutError("The request's head and body were not received within 0.3s."))
        await assert_closed(reader)


@pytest.mark.asyncio
async def test_graceful_shutdown_waits_for_the_request_in_flight() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            started.set()
            await release.wait()
        return await text(request)

    async with serving(handler) as (server, port):
        idle_reader, idle_writer = await connect(port)
        idle_writer.write(b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(idle_reader) == text_reply(b"GET /idle")
        reader, writer = await connect(port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await within(started.wait())

        shutdown = asyncio.create_task(server.shutdown(5.0))
        await assert_closed(idle_reader)  # idle connections close at once
        with pytest.raises(OSError):
            await connect(port)  # no longer listening
        assert (shutdown.done(), server.inflight) == (False, 1)
        release.set()
        assert await read_reply(reader) == text_reply(b"GET /slow", (("connection", "close"),))
        await assert_closed(reader)
        await within(shutdown)
        assert server.inflight == 0


@pytest.mark.asyncio
async def test_a_handler_failing_during_the_shutdown_gets_the_500_envelope_and_the_close() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        started.set()
        await release.wait()
        raise RuntimeError("broke")

    body = error_body(InternalError("internal error"))
    with captured_logs():
        async with serving(handler) as (server, port):
            reader, writer = await connect(port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            await within(started.wait())
            shutdown = asyncio.create_task(server.shutdown(5.0))
            await eventually(lambda: server.closing)
            release.set()
            assert await read_reply(reader) == Reply("HTTP/1.1 500 Internal Server Error", [
                JSON, ("content-length", str(len(body))), ("connection", "close")], body)
            await assert_closed(reader)
            await within(shutdown)


@pytest.mark.asyncio
async def test_shutdown_cancels_what_outlives_the_grace() -> None:
    handler_cancelled, stream_closed = asyncio.Event(), asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.Event().wait()
        finally:
            stream_closed.set()

    async def handler(request: Request) -> Response:
        if request.path == "/stream":
            return Response(200, [SSE], stream=chunks())
        try:
            await asyncio.Event().wait()
        finally:
            handler_cancelled.set()
        raise AssertionError("unreachable")

    with captured_logs() as records:
        async with serving(handler) as (server, port):
            slow_reader, slow_writer = await connect(port)
            slow_writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            stream_reader, stream_writer = await connect(port)
            stream_writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            await within(stream_reader.readuntil(b"\r\n\r\n"))
            await eventually(lambda: server.inflight == 2)
            started = time.monotonic()
            await within(server.shutdown(0.2))
            assert 0.19 <= time.monotonic() - started < 2  # event-loop timers may fire ~1 ms early
            assert (handler_cancelled.is_set(), stream_closed.is_set(), server.inflight) == (True, True, 0)
            await assert_closed(slow_reader)
            assert await within(stream_reader.read()) == b"5\r\nfirst\r\n"
    assert records == []


# --- listening sockets


async def served_on(server: HttpServer, port: int) -> Reply:
    reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
    writer.write(b"GET /here HTTP/1.1\r\nHost: t\r\n\r\n")
    reply = await read_reply(reader)
    writer.close()
    await within(server.shutdown(1.0))
    return reply


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bindable_beside(port: int) -> bool:
    """Whether another socket that asks for SO_REUSEPORT may bind ``port`` too."""
    with socket.socket() as sibling:
        sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sibling.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.asyncio
async def test_start_serves_on_a_socket_bound_beforehand() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # as `labgate serve --workers N` hands each worker the one it bound
    server = HttpServer(text, error_response=error_response)
    port = await within(server.start("ignored", 1, sock=sock))
    assert port == sock.getsockname()[1]
    assert await served_on(server, port) == text_reply(b"GET /here")


@pytest.mark.asyncio
async def test_start_listens_on_the_port_asked_for() -> None:
    server = HttpServer(text, error_response=error_response)
    wanted = free_port()
    assert await within(server.start("127.0.0.1", wanted)) == wanted
    assert await served_on(server, wanted) == text_reply(b"GET /here")


@pytest.mark.asyncio
@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT on this platform")
@pytest.mark.parametrize("reuse_port", [False, True])
async def test_start_shares_its_port_only_when_asked(reuse_port: bool) -> None:
    server = HttpServer(text, error_response=error_response)
    port = await within(server.start("127.0.0.1", 0, **({"reuse_port": True} if reuse_port else {})))
    try:
        assert bindable_beside(port) is reuse_port
    finally:
        await within(server.shutdown(1.0))


@pytest.mark.asyncio
async def test_shutdown_does_not_wait_for_ever_on_a_handler_that_ignores_its_cancellation() -> None:
    stubborn, let_go = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        stubborn.set()
        while True:
            try:
                await let_go.wait()
                return await text(request)
            except asyncio.CancelledError:
                continue  # swallowed: only the shutdown's own bound can end the wait

    async with serving(handler) as (server, port):
        _, writer = await connect(port)
        writer.write(b"GET /stubborn HTTP/1.1\r\nHost: t\r\n\r\n")
        await within(stubborn.wait())
        tasks = server.busy_tasks()
        try:
            await within(server.shutdown(0.05))  # grace, cancel, then at most _CANCEL_WAIT_S for the cleanup
            assert not any(task.done() for task in tasks)
        finally:
            let_go.set()  # a failure must not leave the task to hang the loop's teardown
            await within(asyncio.gather(*tasks))


# --- limits and half-close (tests/security/test_server_*.py has the hostile cases; these run on uvloop too)


@pytest.mark.asyncio
async def test_request_not_complete_within_the_read_timeout_gets_408() -> None:
    timeout = 0.3
    async with serving(text, limits=ServerLimits(max_body_bytes=1024, request_read_timeout=timeout)) as (_, port):
        reader, writer = await connect(port)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
        for i in range(3):
            await asyncio.sleep(timeout / 3)
            writer.write(b"X-%d: y\r\n" % i)  # reads keep coming: only the whole-request deadline stops it
        assert await read_reply(reader) == error_reply(
            RequestTimeoutError("The request's head and body were not received within 0.3s."))
        assert timeout <= time.monotonic() - started + 0.01 < timeout + 2
        await assert_closed(reader)


@pytest.mark.asyncio
async def test_connection_past_the_per_ip_cap_gets_503_and_is_closed() -> None:
    limits = ServerLimits(max_body_bytes=1024, max_connections_per_ip=1)
    async with serving(text, limits=limits) as (server, port):
        reader, writer = await connect(port)
        await eventually(lambda: server.admission.open == 1)
        refused_reader, _ = await connect(port)
        assert await read_reply(refused_reader) == error_reply(ConnectionLimitError(
            "Too many open connections from your address (server.max_connections_per_ip = 1); retry later."))
        await assert_closed(refused_reader)
        writer.write(b"GET /kept HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /kept")
        writer.close()
        await eventually(lambda: server.admission.open == 0)


@pytest.mark.asyncio
async def test_a_refused_connections_requests_are_not_handled() -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.path)
        return await text(request)

    async with serving(handler, limits=ServerLimits(max_body_bytes=1024, max_connections=1)) as (server, port):
        reader, writer = await connect(port)
        await eventually(lambda: server.admission.open == 1)
        refused_reader, refused_writer = await connect(port)
        refused_writer.write(b"GET /refused HTTP/1.1\r\nHost: t\r\n\r\n")
        refused_writer.write_eof()
        assert await read_reply(refused_reader) == error_reply(ConnectionLimitError(
            "The gateway has too many open connections (server.max_connections = 1); retry later."))
        await assert_closed(refused_reader)
        await eventually(lambda: len(server.connections) == 1)
        writer.write(b"GET /admitted HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"GET /admitted")
        writer.close()
    assert seen == ["/admitted"]


@pytest.mark.asyncio
async def test_trailer_fields_are_counted_but_not_merged() -> None:
    async with serving(echo) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\nab\r\n1\r\nc\r\n0\r\nAuthorization: Bearer x\r\n\r\n")
        assert await read_reply(reader) == json_reply({
            "method": "POST", "path": "/t", "query": "", "headers": {"host": "t", "transfer-encoding": "chunked"},
            "body": "abc", "client": "127.0.0.1"})
        writer.close()


@pytest.mark.asyncio
async def test_half_closed_client_gets_its_answer() -> None:
    async def handler(request: Request) -> Response:
        await asyncio.sleep(0.1)
        return await text(request)

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n")
        writer.write_eof()
        assert await within(reader.readexactly(25)) == b"HTTP/1.1 100 Continue\r\n\r\n"  # the probe
        assert await read_reply(reader) == text_reply(b"GET /half", (("connection", "close"),))
        await assert_closed(reader)


@pytest.mark.asyncio
async def test_whole_body_a_client_never_reads_is_dropped_after_the_write_timeout() -> None:
    big = b"x" * (16 * 1024 * 1024)

    async def handler(request: Request) -> Response:
        return Response(200, [], big)

    async with serving(handler, keepalive_timeout=0.3) as (server, port):
        _, writer = await connect(port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        await eventually(lambda: server.inflight == 1)
        await eventually(lambda: not server.connections)  # cut off, its buffered answer freed


class BufferedTransport(asyncio.Transport):
    """A transport whose written bytes never leave (the client reads nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 4096

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True  # a real transport would now wait for the flush, for ever

    def abort(self) -> None:
        self.aborted = True


@pytest.mark.asyncio
async def test_a_close_that_cannot_flush_is_aborted_after_the_write_timeout() -> None:
    from labgate.server.connection import Connection

    server = HttpServer(text, error_response=error_response, keepalive_timeout=0.05)
    connection, transport = Connection(server), BufferedTransport()
    connection.connection_made(transport)
    await eventually(lambda: transport.closed)  # the idle timeout closes it
    assert not transport.aborted
    await eventually(lambda: transport.aborted)  # and the bytes it cannot flush do not hold it open
    connection.connection_lost(None)


@pytest.mark.asyncio
async def test_a_stream_that_reaches_its_declared_length_is_not_read_further() -> None:
    pulled: list[bytes] = []

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"ab", b"cd"):
            pulled.append(chunk)
            yield chunk
        pulled.append(b"(waiting)")
        await asyncio.Event().wait()  # an upstream that sends nothing more: the answer must not wait for it
        yield b"never"

    async def handler(request: Request) -> Response:
        if request.path == "/s":
            return Response(200, [("content-length", "4")], stream=chunks())
        return await text(request)

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == Reply("HTTP/1.1 200 OK", [("content-length", "4")], b"abcd")
        writer.write(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")  # the framing held: the connection is reused
        assert await read_reply(reader) == text_reply(b"GET /next")
        assert pulled == [b"ab", b"cd"]
        writer.close()


@pytest.mark.asyncio
async def test_every_stream_is_closed_once_its_answer_is_written() -> None:
    log: list[str] = []

    async def handler(request: Request) -> Response:
        headers = [("content-length", "4")] if request.path == "/cut" else []
        return Response(200, headers, stream=Chunks([b"ab", b"cd", b"ef"], log))

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /all HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == Reply("HTTP/1.1 200 OK", [("transfer-encoding", "chunked")], b"abcdef")
        await eventually(lambda: len(log) == 1)
        writer.write(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await read_reply(reader) == Reply("HTTP/1.1 200 OK", [("content-length", "4")], b"abcd")
        await eventually(lambda: len(log) == 2)
        writer.close()
    assert log == ["closed with 0 left", "closed with 1 left"]


@pytest.mark.asyncio
async def test_an_answer_that_cannot_be_made_is_logged_and_closes_the_connection() -> None:
    async def handler(request: Request) -> Response:
        raise RuntimeError("handler broke")

    def broken_errors(exc: LabgateError, headers: Mapping[str, str]) -> Response:
        raise RuntimeError("renderer broke")

    with captured_logs() as records:
        server = HttpServer(handler, error_response=broken_errors)
        port = await within(server.start("127.0.0.1", 0))
        try:
            reader, writer = await connect(port)
            writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            await assert_closed(reader)  # nothing could be written: the connection is unusable
        finally:
            await within(server.shutdown(1.0))
    assert [(r.getMessage(), repr(r.exc_info[1] if r.exc_info else None)) for r in records] == [
        ("unhandled error answering GET /x", "RuntimeError('handler broke')"),
        ("failed to answer GET /x", "RuntimeError('renderer broke')")]


@pytest.mark.asyncio
async def test_methods_beyond_the_common_ones_and_bodies_in_pieces_reach_the_handler_as_str_and_bytes() -> None:
    seen: list[tuple[str, type, bytes]] = []

    async def handler(request: Request) -> Response:
        seen.append((request.method, type(request.body), request.body))
        return await text(request)

    async with serving(handler) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"PROPFIND /dav HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"PROPFIND /dav")
        writer.write(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the body arrives in two pieces
        writer.write(b"2\r\nde\r\n0\r\n\r\n")
        assert await read_reply(reader) == text_reply(b"POST /c")
        writer.close()
    assert seen == [("PROPFIND", bytes, b""), ("POST", bytes, b"abcde")]


@pytest.mark.asyncio
async def test_the_header_limit_counts_the_target_and_each_field_exactly() -> None:
    limit = 200
    async with serving(text, max_header_bytes=limit) as (_, port):
        # the request target in two packets, then "name" + "value" + 4 (": " and CRLF) per field
        target = b"/" + b"p" * 99
        host = len(b"host") + len(b"t") + 4
        for extra, status in ((0, "200 OK"), (1, "431 Request Header Fields Too Large")):
            value = b"v" * (limit - len(target) - host - len(b"x-pad") - 4 + extra)
            reader, writer = await connect(port)
            writer.write(b"GET " + target[:50])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(target[50:] + b" HTTP/1.1\r\nHost: t\r\nX-Pad: " + value + b"\r\n\r\n")
            reply = await read_reply(reader)
            assert reply.status == f"HTTP/1.1 {status}"
            if extra == 0:
                assert reply.body == b"GET " + target.decode().encode()  # the whole target, both packets
            writer.close()


# --- one Connection on a fake transport, its timers recorded (what a real socket cannot show deterministically)


class FakeSocket:
    family = socket.AF_INET

    def __init__(self) -> None:
        self.error = 0  # SO_ERROR: the reset a client's host sent back
        self.broken = False

    def setsockopt(self, *_: Any) -> None:
        if self.broken:
            raise OSError("connection reset by peer")

    def getsockopt(self, level: int, name: int) -> int:
        assert (level, name) == (socket.SOL_SOCKET, socket.SO_ERROR)
        if self.broken:
            raise OSError("bad file descriptor")
        return self.error


class FakeTransport(asyncio.Transport):
    """Records what the connection writes; ``closing``/``aborted`` say what it did to the connection."""

    def __init__(self, sock: FakeSocket | None) -> None:
        super().__init__()
        self.sock = sock
        self.written: list[bytes] = []
        self.closing = self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "socket": self.sock}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing or self.aborted

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Timers:
    """Stands in for the connection's loop in ``call_later``: the calls are run by hand, in order."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
        self.pending.append((delay, callback, args))
        return asyncio.get_running_loop().call_later(3600, lambda: None)  # a handle the connection may cancel

    def run_next(self) -> float:
        delay, callback, args = self.pending.pop(0)
        callback(*args)
        return delay


def fake_connection(sock: FakeSocket | None = None, **options: Any) -> tuple[Connection, FakeTransport]:
    server = HttpServer(text, error_response=error_response, **options)
    connection, transport = Connection(server), FakeTransport(sock)
    connection.connection_made(transport)
    return connection, transport


def answering(connection: Connection) -> None:
    """As if the connection's task were answering a request (only its presence matters here)."""
    connection.task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]


@pytest.mark.asyncio
async def test_after_a_clients_eof_its_socket_is_checked_for_a_reset_on_a_widening_schedule() -> None:
    sock = FakeSocket()
    connection, transport = fake_connection(sock)
    answering(connection)
    connection._loop = timers = Timers()  # type: ignore[assignment]
    assert connection.eof_received() is True  # answer, then close
    delays = [timers.run_next() for _ in range(8)]
    assert delays == pytest.approx([0.0, 0.002, 0.018, 0.08, 0.4, 0.5, 2.0, 2.0])
    assert not transport.aborted
    sock.error = 104  # ECONNRESET: the client closed its socket, it did not only half-close
    timers.run_next()
    assert (transport.aborted, timers.pending) == (True, [])
    connection.connection_lost(None)


@pytest.mark.asyncio
async def test_the_reset_check_without_a_socket_waits_and_with_a_failing_one_aborts() -> None:
    connection, transport = fake_connection(None)  # a transport that has no socket to ask
    answering(connection)
    connection._loop = timers = Timers()  # type: ignore[assignment]
    connection.eof_received()
    timers.run_next()
    assert (transport.aborted, len(timers.pending)) == (False, 1)
    connection.connection_lost(None)

    sock = FakeSocket()
    connection, transport = fake_connection(sock)
    answering(connection)
    connection._loop = timers = Timers()  # type: ignore[assignment]
    connection.eof_received()
    sock.broken = True
    timers.run_next()
    assert (transport.aborted, timers.pending) == (True, [])
    connection.connection_lost(None)


@pytest.mark.asyncio
@pytest.mark.parametrize("ended", ["answered", "lost"])
async def test_the_reset_check_stops_once_the_answer_is_done_or_the_connection_lost(ended: str) -> None:
    sock = FakeSocket()
    connection, transport = fake_connection(sock)
    answering(connection)
    connection._loop = timers = Timers()  # type: ignore[assignment]
    connection.eof_received()
    sock.error = 104
    if ended == "answered":
        connection.task = None
    else:
        connection._lost = True
    timers.run_next()
    assert (transport.aborted, timers.pending) == (False, [])


@pytest.mark.asyncio
async def test_writing_resumed_with_no_one_waiting_for_it_is_harmless() -> None:
    connection, _ = fake_connection(FakeSocket())
    connection.pause_writing()
    connection.resume_writing()  # paused and resumed by the transport while no answer was draining
    connection.pause_writing()
    drained = asyncio.ensure_future(connection._drain())
    await asyncio.sleep(0)
    connection.resume_writing()
    await within(drained)
    connection.pause_writing()
    connection.resume_writing()  # the finished drain left nothing behind to wake
    connection.connection_lost(None)


@pytest.mark.asyncio
async def test_bytes_arriving_after_the_idle_close_are_not_parsed() -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.path)
        return await text(request)

    server = HttpServer(handler, error_response=error_response)
    connection, transport = Connection(server), FakeTransport(FakeSocket())
    connection.connection_made(transport)
    connection.idle_timed_out()
    assert transport.closing
    connection.data_received(b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n")  # already on its way when we closed
    await asyncio.sleep(0.01)
    assert (connection.task, seen, transport.written) == (None, [], [])
    connection.connection_lost(None)


class UnixTransport(FakeTransport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": "", "socket": None}.get(name, default)  # an unnamed Unix socket's peer


@pytest.mark.asyncio
async def test_a_connection_without_a_peer_address_is_served_without_a_client() -> None:
    connection, transport = Connection(HttpServer(echo, error_response=error_response)), UnixTransport(None)
    connection.connection_made(transport)
    connection.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    await eventually(lambda: bool(transport.written))
    assert transport.written[0].endswith(orjson.dumps({
        "method": "GET", "path": "/x", "query": "", "headers": {"host": "t"}, "body": "", "client": None}))
    connection.connection_lost(None)


@pytest.mark.asyncio
async def test_a_socket_that_refuses_its_options_still_serves() -> None:
    sock = FakeSocket()
    sock.broken = True  # e.g. the client reset the connection before it was made
    connection, transport = fake_connection(sock)
    connection.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    await eventually(lambda: bool(transport.written))
    assert transport.written[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.written[0].endswith(b"GET /x")
    connection.connection_lost(None)


@pytest.mark.asyncio
async def test_a_target_of_exactly_the_header_limit_is_accepted() -> None:
    limit = 100
    connection, transport = fake_connection(FakeSocket(), max_header_bytes=limit)
    target = b"/" + b"p" * (limit - 1)
    connection.data_received(b"GET " + target + b" HTTP/1.0\r\n\r\n")  # HTTP/1.0: no Host, no other field
    await eventually(lambda: bool(transport.written))
    assert transport.written[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.written[0].endswith(target)
    connection.connection_lost(None)


@pytest.mark.asyncio
async def test_blank_lines_before_the_first_request_are_not_a_header_section() -> None:
    connection, transport = fake_connection(FakeSocket(), max_header_bytes=100)
    for _ in range(2):
        connection.data_received(b"\r\n" * 60)  # llhttp skips them: no request has begun
    connection.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    await eventually(lambda: bool(transport.written))
    assert transport.written[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.written[0].endswith(b"GET /x")
    connection.connection_lost(None)


@pytest.mark.asyncio
async def test_body_bytes_in_pieces_larger_than_the_header_limit_are_not_a_header_section() -> None:
    connection, transport = fake_connection(FakeSocket(), max_header_bytes=100)
    connection.data_received(b"POST /length HTTP/1.1\r\nHost: t\r\nContent-Length: 600\r\n\r\n")
    for _ in range(2):
        connection.data_received(b"x" * 300)
    await eventually(lambda: len(transport.written) == 1)
    connection.data_received(b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(2):
        connection.data_received(b"12c\r\n" + b"x" * 300 + b"\r\n")
    connection.data_received(b"0\r\n\r\n")
    await eventually(lambda: len(transport.written) == 2)
    assert [(w.split(b"\r\n", 1)[0], w.rsplit(b"\r\n", 1)[1]) for w in transport.written] == [
        (b"HTTP/1.1 200 OK", b"POST /length"), (b"HTTP/1.1 200 OK", b"POST /chunked")]
    connection.connection_lost(None)


@pytest.mark.asyncio
@pytest.mark.parametrize("aborted_in", ["handler", "stream"])
async def test_requests_pipelined_behind_an_answer_whose_connection_went_are_not_handled(aborted_in: str) -> None:
    """The transport is aborted while an answer is made (as the reset check does for a client that left);
    until its ``connection_lost`` arrives, nothing more is handled or written. Only the handler sees it."""
    seen: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        transport.abort()
        yield b"second"

    async def handler(request: Request) -> Response:
        seen.append(request.path)
        if request.path == "/1" and aborted_in == "stream":
            return Response(200, [], stream=chunks())
        if request.path == "/1":
            transport.abort()
        return await text(request)

    server = HttpServer(handler, error_response=error_response)
    connection, transport = Connection(server), FakeTransport(FakeSocket())
    connection.connection_made(transport)
    connection.data_received(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in (1, 2, 3)))
    await eventually(lambda: connection.task is None)
    written = [b"5\r\nfirst\r\n"] if aborted_in == "stream" else []
    assert (seen, transport.written[1:] if written else transport.written) == (["/1"], written)
    connection.connection_lost(None)


@pytest.mark.asyncio
async def test_a_header_section_received_in_pieces_may_use_exactly_the_limit() -> None:
    """The raw bytes of a section still open count from the packet after the one that opened it; whitespace
    llhttp drops (before a value) counts there, not in the fields, so the raw count alone reaches the limit."""
    limit = 100
    connection, transport = fake_connection(FakeSocket(), max_header_bytes=limit)
    connection.data_received(b"GET /x HTTP/1.1\r\n")
    piece = b"Host: t\r\nX-Pad:" + b" " * (limit - 16) + b"v"
    assert len(piece) == limit
    connection.data_received(piece)
    connection.data_received(b"\r\n\r\n")
    await eventually(lambda: bool(transport.written))
    assert transport.written[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.written[0].endswith(b"GET /x")
    connection.connection_lost(None)


# --- the same cases on uvloop

UVLOOP_CASES = [
    test_get_builds_the_request_and_answers_with_content_length,
    test_post_with_aiohttp_reads_the_body,
    test_keep_alive_answers_several_requests_on_one_connection,
    test_aiohttp_reuses_one_connection,
    test_pipelined_requests_are_answered_in_order,
    test_chunked_request_body_is_decoded,
    test_expect_100_continue_is_answered_before_the_body_is_sent,
    test_expect_100_continue_waits_for_the_answers_owed_before_it,
    test_head_gets_the_length_but_no_body,
    test_client_connection_close_is_honoured,
    test_http_1_0_closes_unless_keep_alive_is_asked,
    test_too_large_content_length_gets_413_without_reading_the_body,
    test_chunked_body_growing_past_the_limit_gets_413,
    test_malformed_request_gets_400_after_the_answers_owed_before_it,
    test_header_section_over_the_limit_gets_431,
    test_handler_exception_gets_the_500_envelope_and_is_logged_once,
    test_stream_chunks_go_out_as_they_are_produced,
    test_stream_with_content_length_and_to_http_1_0_is_not_chunked,
    test_stream_failing_after_the_head_is_logged_and_the_connection_closed,
    test_large_bodies_arrive_whole_through_flow_control,
    test_client_that_reads_nothing_is_cut_after_the_timeout,
    test_client_disconnect_mid_stream_closes_the_iterator,
    test_client_disconnect_while_writes_are_paused_closes_the_iterator,
    test_client_disconnect_cancels_a_slow_handler,
    test_idle_keep_alive_connection_is_closed_after_the_timeout,
    test_graceful_shutdown_waits_for_the_request_in_flight,
    test_shutdown_cancels_what_outlives_the_grace,
    test_request_not_complete_within_the_read_timeout_gets_408,
    test_connection_past_the_per_ip_cap_gets_503_and_is_closed,
    test_trailer_fields_are_counted_but_not_merged,
    test_half_closed_client_gets_its_answer,
    test_whole_body_a_client_never_reads_is_dropped_after_the_write_timeout,
]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda case: case.__name__.removeprefix("test_"))
def test_under_uvloop(case: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case())
