"""A lean HTTP/1.1 server on asyncio protocols and httptools.

One ``_Connection`` (an ``asyncio.Protocol``) per client socket feeds bytes to
llhttp (via httptools) and answers requests one at a time, in order: the
first complete request starts a task that runs the handler and writes the
response; requests that arrive meanwhile (pipelining) wait in a queue, with
reading paused. Reading is *not* paused for the request being answered, so a
client that goes away is noticed at once: its handler is cancelled, or its
stream's iterator closed. (A client's EOF counts as going away: HTTP clients
do not half-close, and a cancelled upstream call is worth more than serving
one that does.)

One timer per connection, re-armed lazily: a connection that sends nothing
for ``keepalive_timeout`` while no request is being answered is closed, and a
client that takes nothing we write for as long is cut off.

What a client sees as an error body always comes from the ``error_response``
callable (the JSON envelopes): this module only decides when — 400 for
malformed HTTP, 413 for a body over the limit, 500 for a handler that raised —
and frames the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

import httptools

from labgate.errors import BodyTooLargeError, HeaderTooLargeError, InternalError, LabgateError, RequestError


@dataclass(slots=True)
class Request:
    """One parsed HTTP request, independent of the server that read it."""

    method: str
    path: str  # without the query string, percent-decoding not applied
    query: str  # raw query string, "" if none
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    client: str | None = None  # peer IP address


@dataclass(slots=True)
class Response:
    """What a handler returns: a whole body, or a stream of body chunks."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[Request], Awaitable[Response]]
# Renders the server's own errors; gets the request's headers as far as they were read.
ErrorResponder = Callable[[LabgateError, Mapping[str, str]], Response]

log = logging.getLogger("labgate.server")

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_OWN_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "date"})
_JOIN_BODY_BELOW = 65536  # smaller bodies go out in one write with the head (one segment under TCP_NODELAY)
_LINGER_S = 2.0  # after an error answer, drain the client's unsent body so it reads our answer, not a reset
_CANCEL_WAIT_S = 1.0  # at shutdown, how long cancelled handlers get to run their cleanup

# How a response body goes on the wire.
_NO_BODY, _WHOLE, _CHUNKED, _RAW = range(4)


class HttpServer:
    """Serves ``handler`` over HTTP/1.1 on one or more listening sockets."""

    __slots__ = ("_closing", "_connections", "_date_at", "_date_line", "_error_response", "_handler", "_inflight",
                 "_keepalive", "_max_body", "_max_head", "_servers")

    def __init__(self, handler: Handler, *, max_body_bytes: int, error_response: ErrorResponder,
                 keepalive_timeout: float = 75.0, max_header_bytes: int = 65536) -> None:
        self._handler = handler
        self._error_response = error_response
        self._max_body = max_body_bytes
        self._max_head = max_header_bytes
        self._keepalive = keepalive_timeout
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[_Connection] = set()
        self._inflight = 0
        self._closing = False
        self._date_at = 0
        self._date_line = ""

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None,
                    reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (or on ``sock``, already bound); returns the bound port."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
        else:
            server = await loop.create_server(lambda: _Connection(self), host, port,
                                              reuse_port=reuse_port, backlog=2048)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    @property
    def inflight(self) -> int:
        """Requests whose handler or response stream is running right now."""
        return self._inflight

    def busy_tasks(self) -> set[asyncio.Task[None]]:
        """The tasks answering requests right now, streams included (a reload waits for them to end
        before it closes the old runtime's upstream connections)."""
        return {conn.task for conn in self._connections if conn.task is not None}

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, give in-flight requests ``grace`` s, then cancel them."""
        self._closing = True
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn.close_if_idle()
        busy = {conn.task for conn in self._connections if conn.task is not None}
        if busy:
            _, busy = await asyncio.wait(busy, timeout=grace)
        for conn in list(self._connections):
            conn.abort()
        if busy:
            await asyncio.wait(busy, timeout=_CANCEL_WAIT_S)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), _CANCEL_WAIT_S)
        self._servers.clear()

    def _date(self) -> str:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date_line = f"date: {formatdate(now, usegmt=True)}\r\n"
        return self._date_line

    def _head(self, response: Response, *, send_body: bool, close: bool,
              http10: bool) -> tuple[bytes, int, bool, int | None]:
        """The status line and headers, plus how the body goes out, whether to close, any declared length.

        Framing headers (content-length, transfer-encoding, connection) are ours to write; a handler's
        ``connection: close`` is honoured, and its content-length is kept only on a stream.
        """
        status = response.status
        line = _STATUS_LINES.get(status)
        lines = [line if line is not None and status >= 200 else _status_line(status)]
        stream = response.stream
        length: int | None = None
        dated = False
        for name, value in response.headers:
            key = name.lower()
            if key in _OWN_HEADERS:
                if key == "date":
                    dated = True
                elif key == "connection":
                    close = close or "close" in value.lower()
                    continue
                elif key == "content-length" and stream is not None:
                    length = int(value)
                    if length < 0:
                        raise ValueError(f"negative content-length {value!r}")
                    continue
                else:
                    continue
            lines.append(f"{name}: {value}\r\n")
        if not dated:
            lines.append(self._date())
        if status == 204 or status == 304:
            mode = _NO_BODY
        elif stream is None:
            lines.append(f"content-length: {len(response.body)}\r\n")
            mode = _WHOLE
        elif length is not None:
            lines.append(f"content-length: {length}\r\n")
            mode = _RAW
        elif http10:  # HTTP/1.0 has no chunked coding: the close ends the body
            close = True
            mode = _RAW
        else:
            lines.append("transfer-encoding: chunked\r\n")
            mode = _CHUNKED
        if close:
            lines.append("connection: close\r\n")
        elif http10:
            lines.append("connection: keep-alive\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        # every line ends in exactly one CRLF; a CR or LF inside a name or value would split the head
        if head.count("\n") != len(lines) or head.count("\r") != len(lines):
            raise ValueError(f"CR or LF in the headers of a {status} response")
        return head.encode("latin-1"), mode if send_body else _NO_BODY, close, length


def _status_line(status: int) -> str:
    if type(status) is not int or not 200 <= status <= 999:  # a 1xx is not an answer
        raise ValueError(f"invalid status for a response: {status!r}")
    return f"HTTP/1.1 {status} \r\n"


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("response stream failed while closing")


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order, keep alive or close."""

    __slots__ = ("_began", "_body", "_body_size", "_client", "_continue", "_drain_waiter", "_fatal", "_head_raw",
                 "_head_size", "_headers", "_in_head", "_last_read", "_lingering", "_loop", "_lost", "_parser",
                 "_queue", "_reading_paused", "_server", "_stopped", "_timer", "_transport", "_url", "_write_paused",
                 "task")

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self._parser = httptools.HttpRequestParser(self)
        self._client: str | None = None
        self.task: asyncio.Task[None] | None = None  # answering requests; None while idle
        self._queue: deque[tuple[Request, bool, bool]] = deque()  # pipelined: (request, keep_alive, http10)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_size = 0  # request line and header bytes, as parsed
        self._head_raw = 0  # bytes received while the header section was incomplete (see data_received)
        self._in_head = False
        self._began = False
        self._continue = False  # owe the request being read a "100 Continue" once earlier answers are out
        self._stopped = False  # parsing is over for good: bytes received from now on are discarded
        self._fatal: LabgateError | None = None  # to answer, then close, once the queue is done
        self._lost = False
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._lingering = False

    # --- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport (TCP)
        server = self._server
        server._connections.add(self)
        if server._closing:
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # e.g. the client already reset the connection
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) else None
        self._last_read = self._loop.time()
        self._timer = self._loop.call_later(server._keepalive, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stopped = True
        self._server._connections.discard(self)
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.task is not None:
            self.task.cancel()  # the handler sees CancelledError; a stream's iterator is closed

    def eof_received(self) -> bool:
        return False  # a client that stops sending has gone away: close (and cancel its handler)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._last_read = self._loop.time()
        self._began = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop(None)  # no upgrades: answer the request, then close
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, LabgateError):
                log.error("failed to parse a request", exc_info=cause)
                cause = InternalError("internal error")
            self._stop(cause)
            return
        except httptools.HttpParserError as exc:
            self._stop(RequestError(f"Malformed HTTP request: {exc}."))
            return
        # httptools accumulates a header line before we see it; a line that never ends must not grow
        # without bound. Count whole packets received while the section stays open (not the one that
        # began the message, which may hold a previous message's tail).
        if self._in_head and not self._began:
            self._head_raw += len(data)
            if self._head_raw > self._server._max_head:
                self._stop(_header_too_large())

    # --- parser callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = self._head_size = self._head_raw = 0
        self._in_head = self._began = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._server._max_head:
            raise _header_too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._server._max_head:
            raise _header_too_large()
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").rstrip(" \t")  # llhttp keeps trailing whitespace
        headers = self._headers
        previous = headers.get(key)
        headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        headers = self._headers
        length = headers.get("content-length")
        max_body = self._server._max_body
        if length is not None and int(length) > max_body:
            raise BodyTooLargeError(f"The request body is {length} bytes; the limit is {max_body}.")
        expect = headers.get("expect")
        if expect is not None and expect.lower() == "100-continue" and self._parser.get_http_version() == "1.1":
            if self.task is None:
                self._transport.write(_CONTINUE)
            else:
                self._continue = True  # after the answers still owed on this connection

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._server._max_body:
            raise BodyTooLargeError(f"The request body exceeds the limit of {self._server._max_body} bytes.")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._continue = False
        parser = self._parser
        method = parser.get_method()
        path, query = _split_target(self._url)
        request = Request(_METHODS.get(method) or method.decode("latin-1"), path, query, self._headers,
                          b"".join(self._body), self._client)
        keep_alive = parser.should_keep_alive()
        http10 = parser.get_http_version() == "1.0"
        if self.task is None:
            self.task = self._loop.create_task(self._serve(request, keep_alive, http10))
        else:
            self._queue.append((request, keep_alive, http10))
            self._pause_reading()

    # --- answering

    async def _serve(self, request: Request, keep_alive: bool, http10: bool) -> None:
        """Answer ``request`` and any that were pipelined behind it, then go idle or close."""
        close = True
        try:
            while True:
                close = await self._respond(request, keep_alive, http10)
                if close or not self._queue:
                    break
                if self._write_paused:
                    await self._drain()
                request, keep_alive, http10 = self._queue.popleft()
        except asyncio.CancelledError:
            close = True
            if not (self._lost or self._server._closing):
                raise
        except Exception:
            close = True
            log.exception("failed to answer %s %s", request.method, request.path)
        finally:
            self.task = None
            if not self._lost:
                if close:
                    self._stopped = True
                    self._transport.close()
                else:
                    self._idle()

    async def _respond(self, request: Request, keep_alive: bool, http10: bool) -> bool:
        """Run the handler and write its response; True when the connection must close afterwards."""
        server = self._server
        server._inflight += 1
        response: Response | None = None
        try:
            send_body = request.method != "HEAD"
            try:
                response = await server._handler(request)
                close = self._must_close(keep_alive)
                head, mode, close, length = server._head(response, send_body=send_body, close=close, http10=http10)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("unhandled error answering %s %s", request.method, request.path)
                if response is not None and response.stream is not None:
                    await _aclose(response.stream)
                response = server._error_response(InternalError("internal error"), request.headers)
                close = self._must_close(keep_alive)
                head, mode, close, length = server._head(response, send_body=send_body, close=close, http10=http10)
            transport = self._transport
            if transport.is_closing():
                return True
            if mode == _WHOLE and len(response.body) < _JOIN_BODY_BELOW:
                transport.write(head + response.body)
            else:
                transport.write(head)
                if mode == _WHOLE:
                    transport.write(response.body)
                elif mode != _NO_BODY:
                    assert response.stream is not None
                    close = await self._write_stream(response.stream, chunked=mode == _CHUNKED,
                                                     length=length) or close
            return close
        finally:
            try:
                if response is not None and response.stream is not None:
                    await _aclose(response.stream)
            finally:
                server._inflight -= 1

    def _must_close(self, keep_alive: bool) -> bool:
        """Whether the answer being written is this connection's last (read once the handler is done)."""
        return (not keep_alive or self._server._closing
                or (self._stopped and self._fatal is None and not self._queue))  # no more requests will come

    async def _write_stream(self, stream: AsyncIterator[bytes], *, chunked: bool, length: int | None) -> bool:
        """Write each chunk as it comes; True when the connection must close (the body ended badly)."""
        transport = self._transport
        try:
            async for chunk in stream:
                if not chunk:
                    continue  # an empty HTTP chunk would end the body
                if transport.is_closing():
                    return True
                if chunked:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                elif length is None:
                    transport.write(chunk)
                else:
                    if len(chunk) >= length:
                        transport.write(chunk[:length])
                        return len(chunk) > length  # more than declared: the rest cannot be framed
                    transport.write(chunk)
                    length -= len(chunk)
                if self._write_paused:
                    await self._drain()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("response stream failed after the head was sent")
            return True
        if chunked and not transport.is_closing():
            transport.write(_LAST_CHUNK)
        return bool(length)  # fewer bytes than declared

    async def _drain(self) -> None:
        """Wait until the transport takes writes again; a client that reads nothing for the timeout is cut."""
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        timer = self._loop.call_later(self._server._keepalive, self._transport.abort)
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None

    # --- state changes

    def _idle(self) -> None:
        """Every answer owed is written and the connection stays open."""
        if self._transport.is_closing():
            return
        if self._fatal is not None:
            self._answer_fatal()
            return
        if self._stopped:
            self._transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()
        if self._continue:
            self._continue = False
            self._transport.write(_CONTINUE)
        self._last_read = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self._server._keepalive, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.task is not None or self._lost:
            return  # busy: _idle re-arms
        remaining = self._last_read + self._server._keepalive - self._loop.time()
        if remaining > 0:
            self._timer = self._loop.call_later(remaining, self._on_timer)
        else:
            self._stopped = True
            self._transport.close()

    def _stop(self, error: LabgateError | None) -> None:
        """No more requests from this connection; answer ``error`` (if any) after those already queued."""
        self._stopped = True
        self._fatal = error
        self._pause_reading()
        if self.task is None:
            self._idle()

    def _answer_fatal(self) -> None:
        """Write the error answer, then half-close and linger before closing."""
        error, self._fatal = self._fatal, None
        assert error is not None
        transport = self._transport
        try:
            response = self._server._error_response(error, self._headers)
            if response.stream is not None:
                raise TypeError("error_response must return a whole body")
            head, mode, _, _ = self._server._head(response, send_body=True, close=True, http10=False)
        except Exception:
            log.exception("failed to render a %d error", error.status)
            transport.abort()
            return
        transport.write(head + response.body if mode == _WHOLE else head)
        self._lingering = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(_LINGER_S, transport.abort)
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._reading_paused = False
        transport.resume_reading()  # discarded (self._stopped); the client's EOF closes us

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    # --- shutdown

    def close_if_idle(self) -> None:
        if self.task is None and not self._lingering and not self._lost:
            self._stopped = True
            self._transport.close()

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if not self._lost:
            self._transport.abort()


def _split_target(url: bytes) -> tuple[str, str]:
    """Path and raw query of a request target (origin form, absolute form or ``*``)."""
    if url[:1] != b"/" and url != b"*":
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise RequestError(f"Malformed request target {url[:200]!r}.") from None
        return (parsed.path or b"/").decode("latin-1"), (parsed.query or b"").decode("latin-1")
    path, _, query = url.partition(b"?")
    return path.decode("latin-1"), query.decode("latin-1")


def _header_too_large() -> HeaderTooLargeError:
    return HeaderTooLargeError("The request's header section is too large.")
