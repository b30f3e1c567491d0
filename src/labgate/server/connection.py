"""One client connection: transport events, answering requests in order, keeping alive or closing.

The connection feeds bytes to llhttp (via httptools) and is itself the parser's callback object: the
callbacks apply framing.py's rules (sizes, RFC 9112) and turn each complete message into a ``Request``.
The first starts a task that runs the handler and writes the response; requests that
arrive meanwhile (pipelining) wait in a queue, with reading paused. Reading is *not* paused for the
request being answered, so a client that goes away is noticed at once: its handler is cancelled, or
its stream's iterator closed. A client's EOF is ambiguous: it may have half-closed
(``shutdown(SHUT_WR)``, ``nc -N``) and wait for the answers to its complete requests, or closed its
socket and left. Both get their answers written; to tell them apart while a handler still runs, the
server sends an interim ``100 Continue`` (which every HTTP/1.1 client skips; once a response's
head is out, its next chunk does the same) and checks the socket for the reset that a closed
socket's host sends back: a client that left is still cancelled, a few round trips later.

Times (deadlines.py): the idle and read deadlines share one timer; a client that takes nothing we
write for ``keepalive_timeout`` is cut off, streamed or whole body, and so is one that leaves a
closed connection's last bytes unread.

What a client sees as an error body always comes from the ``error_response`` callable (the JSON
envelopes): this module only decides when and frames the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httptools

from labgate.errors import (
    BodyTooLargeError,
    ConnectionLimitError,
    InternalError,
    LabgateError,
    RequestError,
    RequestTimeoutError,
    UnsupportedFramingError,
)
from labgate.server.deadlines import BUSY, IDLE, READING, Deadlines
from labgate.server.framing import MAX_LENGTH_DIGITS, METHODS, AfterLast, check_codings, header_too_large, split_target
from labgate.server.limits import MAX_REFUSING
from labgate.server.messages import Request, Response
from labgate.server.respond import CHUNKED, CONTINUE, LAST_CHUNK, NO_BODY, WHOLE, aclose

if TYPE_CHECKING:
    from labgate.server.http import HttpServer

log = logging.getLogger("labgate.server")

_JOIN_BODY_BELOW = 65536  # smaller bodies go out in one write with the head (one segment under TCP_NODELAY)
_LINGER_S = 2.0  # after an error answer, drain the client's unsent body so it reads our answer, not a reset
# after a client's EOF, while its answer is being made: when to look for the reset of a client that left
_GONE_CHECKS_S = (0.0, 0.002, 0.02, 0.1, 0.5, 1.0)  # then every _GONE_EVERY_S until the answer is done
_GONE_EVERY_S = 2.0
_SIZE_LIMITS = {413: "server.max_body_bytes", 431: "server.max_header_bytes"}  # logged when they bite


class Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order, keep alive or close."""

    __slots__ = ("_abort_timer", "_admitted", "_body", "_body_size", "_client", "_continue", "_deadlines",
                 "_drain_waiter", "_fatal", "_fresh", "_head_size", "_headers", "_http10", "_in_head", "_in_message",
                 "_last", "_limits", "_lingering", "_loop", "_lost", "_may_probe", "_open", "_open_raw", "_parser",
                 "_queue", "_reading_paused", "_refusing", "_server", "_stopped", "_transport", "_url",
                 "_write_paused", "task")

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self._client: str | None = None
        self._deadlines = Deadlines(self._loop, self, keepalive=self._limits.keepalive_timeout,
                                    read_timeout=self._limits.request_read_timeout)
        self._parser = httptools.HttpRequestParser(self)  # calls the on_* methods below
        self.task: asyncio.Task[None] | None = None  # answering requests; None while idle
        self._queue: deque[tuple[Request, bool, bool]] = deque()  # pipelined: (request, keep_alive, http10)
        self._continue = False  # owe the request being read a "100 Continue" once earlier answers are out
        self._stopped = False  # parsing is over for good: bytes received from now on are discarded
        self._fatal: LabgateError | None = None  # to answer, then close, once the queue is done
        self._admitted = False  # counted by the server's Admission (released when the connection is lost)
        self._refusing = False  # refused, and being answered 503 (counted in Admission.refusing)
        self._lost = False
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None  # lingering, or a close waiting for its flush
        self._lingering = False
        self._may_probe = False  # an HTTP/1.1 answer's head is not written yet: a 1xx may still go out
        # the request being read (the llhttp callbacks below)
        self._url = b""
        self._headers: dict[str, str] = {}  # its headers as far as read (an error's request id comes from them)
        self._body: bytes | bytearray = b""
        self._body_size = 0
        self._head_size = 0  # request line, header and trailer field bytes, as parsed
        self._open = False  # a header or trailer section is being received: its raw bytes count (data_received)
        self._open_raw = 0
        self._fresh = False  # the section opened in the packet being fed
        self._in_head = False
        self._http10 = False
        self._in_message = False  # a request began and is not complete yet
        self._last = False  # the request read last is the connection's last: parse nothing after it

    # --- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport (TCP)
        server = self._server
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self._client = client = peer[0] if isinstance(peer, tuple) else None
        if server.closing:
            self._stopped = True
            transport.close()
            return
        admission = server.admission
        refused = admission.admit(client)
        if refused is not None:
            self._stopped = True
            if admission.refusing >= MAX_REFUSING:
                self._transport.abort()  # a flood: answering each refusal would hold its descriptor too
                return
            admission.refusing += 1
            self._refusing = True
            self._fatal = ConnectionLimitError(refused)
            self._answer_fatal()
            return
        self._admitted = True
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # e.g. the client already reset the connection
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._deadlines.idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stopped = True
        server = self._server
        server.connections.discard(self)
        if self._admitted:
            self._admitted = False
            server.admission.release(self._client)
        elif self._refusing:
            self._refusing = False
            server.admission.refusing -= 1
        self._queue.clear()
        self._deadlines.cancel()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.task is not None:
            self.task.cancel()  # the handler sees CancelledError; a stream's iterator is closed

    def eof_received(self) -> bool:
        if self.task is None or self._lingering:
            return False  # nothing owed (or only a request half sent): the client has gone; close
        # Complete requests are being answered: the client may only have half-closed and wait for them.
        # Answer, then close; find out meanwhile whether it left for good (see the module docstring).
        self._stopped = True
        if self._may_probe:
            self._may_probe = False
            self._transport.write(CONTINUE)
        self._loop.call_later(_GONE_CHECKS_S[0], self._check_gone, 0)
        return True

    def _check_gone(self, attempt: int) -> None:
        """After a client's EOF: a pending socket error is the reset its host sent to what we wrote."""
        if self._lost or self.task is None:
            return
        sock = self._transport.get_extra_info("socket")
        try:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if sock is not None else 0
        except OSError:
            error = 1
        if error:
            self._transport.abort()  # connection_lost cancels the handler
        else:
            attempt += 1
            last = attempt >= len(_GONE_CHECKS_S)
            delay = _GONE_EVERY_S if last else _GONE_CHECKS_S[attempt] - _GONE_CHECKS_S[attempt - 1]
            self._loop.call_later(delay, self._check_gone, attempt)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        """Parse ``data``: complete requests are answered (or queued), and a reason to stop reading is acted on."""
        if self._stopped:
            return
        self._fresh = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.stop_reading(None)  # no upgrades: answer the request, then close
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, AfterLast):
                self.stop_reading(None)
                return
            if not isinstance(cause, LabgateError):
                log.error("failed to parse a request", exc_info=cause)
                cause = InternalError("internal error")
            self.stop_reading(cause)
            return
        except httptools.HttpParserError as exc:
            # llhttp refuses bytes after a message that closes the connection: nothing to answer (but an
            # HTTP/1.0 chunked request is the last from its head on, and its malformed body is answered)
            last_done = self._last and not self._in_message
            self.stop_reading(None if last_done else RequestError(f"Malformed HTTP request: {exc}."))
            return
        if self._last:
            self._stopped = True
        # httptools accumulates a header or trailer line before we see it; a line that never ends must
        # not grow without bound. Count whole packets received while the section stays open (not the
        # one that opened it, which may hold a previous message's tail).
        if self._open and not self._fresh:
            self._open_raw += len(data)
            if self._open_raw > self._limits.max_header_bytes:
                self.stop_reading(header_too_large())

    # --- llhttp callbacks (the rules and helpers: framing.py)

    def on_message_begin(self) -> None:
        if self._last:
            raise AfterLast
        self._url = b""
        self._headers = {}
        self._body = b""
        self._body_size = self._head_size = self._open_raw = 0
        self._in_head = self._open = self._fresh = self._in_message = True
        deadlines = self._deadlines  # deadlines.reading(), without its call when the timer is armed
        deadlines.read_since = deadlines.clock()
        if deadlines.handle is None:
            deadlines.reading()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._limits.max_header_bytes:
            raise header_too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_size + len(name) + len(value) + 4
        self._head_size = size
        if size > self._limits.max_header_bytes:
            raise header_too_large()
        if not self._in_head:
            return  # a trailer field: counted against the limit, never taken for a request header
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").rstrip(" \t")  # llhttp keeps trailing whitespace
        headers = self._headers
        if key not in headers:
            headers[key] = text
        elif key == "host":
            raise RequestError("The request has more than one Host header.")
        else:
            headers[key] = f"{headers[key]}, {text}"

    def on_headers_complete(self) -> None:
        self._in_head = self._open = False
        headers = self._headers
        version = self._parser.get_http_version()
        http10 = self._http10 = version == "1.0"
        if not http10:
            if version != "1.1":
                raise UnsupportedFramingError(f"HTTP/{version} is not supported; use HTTP/1.1.", status=505)
            if "host" not in headers:
                raise RequestError("An HTTP/1.1 request must have a Host header.")
        length = headers.get("content-length")
        if length is not None:
            if len(length) > MAX_LENGTH_DIGITS:
                raise RequestError(f"Invalid Content-Length ({len(length)} digits).")
            max_body = self._limits.max_body_bytes
            if int(length) > max_body:
                raise BodyTooLargeError(f"The request body is {int(length)} bytes; the limit is {max_body}.")
        if "transfer-encoding" in headers:  # rare: a membership test first, not a call
            coding = headers["transfer-encoding"]
            if coding.lower() != "chunked":
                check_codings(coding)
            if http10:
                self._last = True  # RFC 9112 §6.1: HTTP/1.0 framing is faulty with it; close after
        if "expect" in headers and headers["expect"].lower() == "100-continue" and not http10:
            if self.task is None:
                self._transport.write(CONTINUE)
            else:
                self._continue = True  # after the answers still owed on this connection

    def on_chunk_header(self) -> None:
        # a chunk's size line ended; if no data follows it was the last chunk, and a trailer section is open
        self._open = self._fresh = True
        self._open_raw = self._head_size

    def on_body(self, body: bytes) -> None:
        self._open = False
        size = self._body_size + len(body)
        if size > self._limits.max_body_bytes:
            raise BodyTooLargeError(f"The request body exceeds the limit of {self._limits.max_body_bytes} bytes.")
        self._body_size = size
        current = self._body
        if not current:
            self._body = body
        elif type(current) is bytes:
            buffer = bytearray(current)
            buffer += body
            self._body = buffer
        else:
            current += body

    def on_message_complete(self) -> None:
        """A whole request: answer it now, or queue it behind the answers still owed (pipelining)."""
        self._open = self._in_message = False
        parser = self._parser
        method = parser.get_method()
        url = self._url
        if url[:1] == b"/":  # origin form (split_target's common case, without its frame)
            raw_path, _, raw_query = url.partition(b"?")
            path, query = raw_path.decode("latin-1"), raw_query.decode("latin-1")
        else:
            path, query = split_target(url)
        body = self._body
        keep_alive = parser.should_keep_alive() and not self._last
        if not keep_alive:
            self._last = True
        request = Request(METHODS.get(method) or method.decode("latin-1"), path, query, self._headers,
                          body if type(body) is bytes else bytes(body), self._client)
        self._continue = False
        if self.task is None:
            self.task = self._loop.create_task(self._serve(request, keep_alive, self._http10))
        else:
            self._queue.append((request, keep_alive, self._http10))
            self._pause_reading()

    # --- reading ends

    def stop_reading(self, error: LabgateError | None) -> None:
        """No more requests from this connection; answer ``error`` (if any) after those already queued."""
        if error is not None and error.status in _SIZE_LIMITS:
            key = _SIZE_LIMITS[error.status]
            self._server.limit_log.warn(key, "a request from %s was refused with %d (%s)", self._client,
                                        error.status, key)
        self._stopped = True
        self._fatal = error
        self._pause_reading()
        if self.task is None:
            self._idle()

    # --- deadlines (see deadlines.py)

    def deadline_state(self) -> int:
        if self._lost or self._lingering or (self._stopped and self._fatal is None):
            return BUSY
        if self._in_message and not self._reading_paused:
            return READING
        return BUSY if self.task is not None else IDLE

    def read_timed_out(self) -> None:
        timeout = self._limits.request_read_timeout
        self._server.limit_log.warn("request_read_timeout", "a request from %s was not complete after %gs "
                                    "(server.request_read_timeout_s): answered 408", self._client, timeout)
        self.stop_reading(RequestTimeoutError(
            f"The request's head and body were not received within {timeout:g}s."))

    def idle_timed_out(self) -> None:
        self._stopped = True
        self._close()

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
            if not (self._lost or self._server.closing):
                raise
        except Exception:  # the answer could not be written: logged once, and the connection is unusable
            close = True
            log.exception("failed to answer %s %s", request.method, request.path)
        finally:
            self.task = None
            if not self._lost:
                if close:
                    self._stopped = True
                    self._close()
                else:
                    self._idle()

    async def _respond(self, request: Request, keep_alive: bool, http10: bool) -> bool:
        """Run the handler and write its response; True when the connection must close afterwards."""
        server = self._server
        server.inflight += 1
        response: Response | None = None
        self._may_probe = not http10  # HTTP/1.0 clients get no 1xx (RFC 9110 §15.2)
        try:
            send_body = request.method != "HEAD"
            try:
                response = await server.handler(request)
                close = (not keep_alive or server.closing  # _must_close(), without its frame
                         or (self._stopped and self._fatal is None and not self._queue))
                head, mode, close, length = server.heads.render(response, send_body=send_body, close=close,
                                                                http10=http10)
            except asyncio.CancelledError:
                raise
            except Exception:  # the outermost catch-all: a 500 envelope; the traceback only in the log
                log.exception("unhandled error answering %s %s", request.method, request.path)
                if response is not None and response.stream is not None:
                    await aclose(response.stream)
                response = server.error_response(InternalError("internal error"), request.headers)
                close = self._must_close(keep_alive)
                head, mode, close, length = server.heads.render(response, send_body=send_body, close=close,
                                                                http10=http10)
            self._may_probe = False
            transport = self._transport
            if transport.is_closing():
                return True
            if mode == WHOLE and len(response.body) < _JOIN_BODY_BELOW:
                transport.write(head + response.body)
            else:
                transport.write(head)
                if mode == WHOLE:
                    transport.write(response.body)
                elif mode != NO_BODY:
                    assert response.stream is not None
                    close = await self._write_stream(response.stream, chunked=mode == CHUNKED,
                                                     length=length) or close
            if self._write_paused:
                await self._drain()  # a client that takes nothing of a whole body is cut off like a stream's
            return close
        finally:
            try:
                if response is not None and response.stream is not None:
                    await aclose(response.stream)
            finally:
                server.inflight -= 1

    def _must_close(self, keep_alive: bool) -> bool:
        """Whether the answer being written is this connection's last (read once the handler is done)."""
        return (not keep_alive or self._server.closing
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
        except Exception:  # the head is out: all we can do is log it and end the body by closing
            log.exception("response stream failed after the head was sent")
            return True
        if chunked and not transport.is_closing():
            transport.write(LAST_CHUNK)
        return bool(length)  # fewer bytes than declared

    async def _drain(self) -> None:
        """Wait until the transport takes writes again; a client that reads nothing for the timeout is cut."""
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        timer = self._loop.call_later(self._limits.keepalive_timeout, self._transport.abort)
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
            self._close()
            return
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()
            if self._in_message:
                self._deadlines.reading()  # its clock stopped while we did not read
        if self._continue:
            self._continue = False
            self._transport.write(CONTINUE)
        deadlines = self._deadlines  # deadlines.idle(), without its call when the timer is armed
        deadlines.idle_since = deadlines.clock()
        if deadlines.handle is None:
            deadlines.idle()

    def _close(self) -> None:
        """Close once what is written is flushed; a client that never takes it is cut off after the timeout."""
        transport = self._transport
        if transport.get_write_buffer_size() and self._abort_timer is None:
            self._abort_timer = self._loop.call_later(self._limits.keepalive_timeout, transport.abort)
        transport.close()

    def _answer_fatal(self) -> None:
        """Write the error answer, then half-close and linger before closing."""
        error, self._fatal = self._fatal, None
        assert error is not None
        transport = self._transport
        try:
            response = self._server.error_response(error, self._headers)
            if response.stream is not None:
                raise TypeError("error_response must return a whole body")
            head, mode, _, _ = self._server.heads.render(response, send_body=True, close=True, http10=False)
        except Exception:  # a broken error renderer: log it; the client sees the connection reset
            log.exception("failed to render a %d error", error.status)
            transport.abort()
            return
        transport.write(head + response.body if mode == WHOLE else head)
        self._lingering = True
        self._deadlines.cancel()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        self._abort_timer = self._loop.call_later(_LINGER_S, transport.abort)
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
            self._close()

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if not self._lost:
            self._transport.abort()
