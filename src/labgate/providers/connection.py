"""One keep-alive HTTP/1.1 connection to an upstream: the protocol the pool's connections run.

A :class:`Connection` is an ``asyncio.Protocol`` feeding llhttp (via
httptools). It carries one exchange at a time: :meth:`Connection.send` writes
a whole request in one ``transport.write`` and returns a future for the
answer. When the response is complete and allows keep-alive, the connection
goes back to its :class:`~labgate.providers.pool.Pool` at once, from the
protocol callback; a connection that errored, was cut, timed out, was
abandoned mid-response or answered ``connection: close`` is closed instead,
never reused.

A connection is reused only when it is known clean: llhttp is between
messages and no byte has arrived that was not asked for. Bytes after a
complete response (a duplicate, a second response in the same read, an
unsolicited one while idle) mean the upstream and we no longer agree on
where answers start, so the connection is closed: in the same read, the
parser stops at the next message's first byte (``on_message_begin`` raises;
llhttp skips bare CR/LF between messages, which cannot start an answer);
in a later read, ``data_received`` sees bytes with no exchange in progress
and aborts. Neither costs anything per request. What ``data_received`` cannot
see are bytes that reached the socket after the loop last polled it, and a
pooled connection can be handed out in the same loop iteration (LIFO reuse):
so before reusing one, :meth:`Connection.ready` (inline in ``Pool.acquire``)
asks the kernel with one ``poll(2)`` of zero timeout (~0.5 µs, only on reuse)
whether anything is waiting; if so the connection is dropped. What remains is
inherent to HTTP/1.1: bytes the upstream sends after we have written the next
request look exactly like its answer; no client can tell them apart.

Every limit on what an upstream sends is explicit: the header section
(``MAX_HEADER_BYTES``, ``MAX_HEADER_COUNT``, interim answers
``MAX_INTERIM``; chunk framing and trailers between body bytes, twice
``MAX_HEADER_BYTES``), the body (the pool's ``max_body``, ``max_response_bytes``
in config; a ``content-length`` above it is refused before any body byte is
read) and an error body (``MAX_ERROR_BODY``: read that far, then the
connection is dropped and the error reported with what arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from typing import TYPE_CHECKING

import httptools

from labgate.errors import (
    LabgateError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)
from labgate.providers.body import BodyQueue

if TYPE_CHECKING:
    from labgate.providers.pool import Pool

MAX_HEADER_BYTES = 65536  # an answer's header section (names, values and 4 bytes a line), as the server's
MAX_HEADER_COUNT = 256  # header lines in one answer
MAX_INTERIM = 8  # 1xx answers before the final one
MAX_ERROR_BODY = 65536  # bytes of a non-2xx answer's body that are read (the message is in the first few)
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # bytes of a 2xx body (whole or streamed), unless the provider says

TOO_LARGE = "upstream_response_too_large"  # the error code of a body over the limit

# (status, headers, body): body is bytes for a whole response, a BodyQueue for a stream
Answer = tuple[int, dict[str, str], "bytes | BodyQueue"]


class _Halt(Exception):
    """Raised in a parser callback to stop llhttp at once; ``data_received`` reads why from the connection."""


class Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its response parsed by llhttp."""

    __slots__ = ("_body", "_complete", "_dirty", "_halt", "_head_bytes", "_head_lines", "_head_raw", "_headers",
                 "_in_head", "_interim", "_keep", "_limit", "_no_body", "_parser", "_paused", "_poll", "_pool",
                 "_repeated", "_size", "_status", "_stream", "_waiter", "closed", "holds_slot", "idle_since", "loop",
                 "lost", "received", "transport", "uses")

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._poll: select.poll | None = None  # the socket, for ready(); None where poll(2) is missing
        self.closed: asyncio.Future[None] = loop.create_future()  # done once connection_lost ran
        self.holds_slot = True
        self.lost = False
        self._dirty = False  # bytes arrived that no exchange asked for, or llhttp is not between messages
        self.uses = 0  # requests sent
        self.idle_since = 0.0
        self._paused = False
        # the exchange in progress (the waiter stays set until the response is complete or failed)
        self._waiter: asyncio.Future[Answer] | None = None
        self._stream: BodyQueue | None = None
        self._no_body = False  # a HEAD request: the answer has headers only
        self.received = False  # any byte of the answer has arrived
        self._reset()

    def _reset(self) -> None:
        """Per-exchange parse state (a handful of stores: the whole per-request cost of the limits)."""
        self._status = 0
        self._headers: dict[str, str] = {}
        self._repeated: dict[str, list[str]] | None = None  # values of a header sent more than once
        self._head_bytes = 0  # header bytes parsed, counted as the server counts them
        self._head_lines = 0  # lines len(_headers) does not count: repeated names, trailers
        self._head_raw = 0  # bytes received while the head is open, or since the last body byte (data_received)
        self._in_head = True
        self._interim = 0  # 1xx answers seen before the final one
        self._body: list[bytes] = []
        self._size = 0  # body bytes received
        self._limit = self._pool.max_body
        self._halt: LabgateError | None = None  # why a callback stopped the parser (None: the answer is complete)
        self._complete = False
        self._keep = False

    @property
    def where(self) -> str:
        """"provider 'x'", for messages."""
        return self._pool.where

    def ready(self) -> bool:
        """Clean and connected (llhttp is between messages, nothing unasked-for has arrived: the test
        ``Pool.put`` makes inline), and nothing waits unread in the socket (one zero-timeout poll): just
        before reuse."""
        transport = self.transport
        if self._dirty or self.lost or transport is None or transport.is_closing():
            return False
        poller = self._poll
        if poller is None:
            return True
        try:
            if not poller.poll(0):
                return True
        except (OSError, ValueError):  # closed under us
            pass
        self._dirty = True
        return False

    # --- the exchange

    def send(self, data: bytes, *, stream: bool, no_body: bool = False) -> asyncio.Future[Answer]:
        """Write one whole request; the future gets the answer (at its head, for a stream)."""
        self._waiter = waiter = self.loop.create_future()
        self._stream = BodyQueue(self) if stream else None
        self._no_body = no_body
        self.received = False
        # _reset(), less what a clean connection already holds (only clean ones are sent on): the previous
        # exchange's _finish emptied _body and cleared _complete, _halt is set only on a connection that
        # failed, and on_message_begin starts _headers and _repeated afresh before any header is read
        self._status = self._head_bytes = self._head_lines = self._head_raw = self._interim = self._size = 0
        self._in_head = True
        self._limit = self._pool.max_body
        self.uses += 1
        self.transport.write(data)  # type: ignore[union-attr]  # acquired connections are connected
        return waiter

    def abandon(self, waiter: asyncio.Future[Answer]) -> None:
        """The caller gave up on this exchange (cancelled): if it is still going, cut the connection."""
        if self._waiter is waiter:
            self._waiter = self._stream = None
            self._body = []
            self.abort()

    def cut(self, stream: BodyQueue) -> None:
        """The reader of ``stream`` stopped before its end: the connection cannot be reused."""
        if self._stream is stream:
            self._waiter = self._stream = None
            self._body = []
        self.abort()

    def time_out(self, waiter: asyncio.Future[Answer], timeout: float) -> None:
        """Timer callback: the answer's head (or whole body) did not come within ``timeout``."""
        if self._waiter is waiter:
            self.fail(UpstreamTimeoutError(f"{self._pool.where} timed out after {timeout:g} s"))

    def fail(self, error: LabgateError) -> None:
        """End the exchange in progress (if any) with ``error``, and the connection with it."""
        self._fail(error)
        self.abort()

    def _finish(self) -> None:
        """The answer is complete: deliver it, then pool or close the connection."""
        if self._status < 200:  # never parsed a final status: not an answer, whatever the bytes said
            self.fail(UpstreamBadResponseError(f"{self._pool.where} sent a response without a status"))
            return
        self._complete = False
        waiter, stream = self._waiter, self._stream
        self._waiter = self._stream = None
        if stream is None:
            if waiter is not None and not waiter.done():
                body = b"" if self._no_body else b"".join(self._body)  # a HEAD answer's body is not ours
                waiter.set_result((self._status, self._headers, body))
        else:
            stream.finish()
        self._body = []
        if self._keep and not self._dirty and not self.lost:
            if self._paused:
                self.resume()
            self._pool.put(self)
        else:
            self.close()

    def _fail(self, error: LabgateError) -> None:
        waiter, stream = self._waiter, self._stream
        self._waiter = self._stream = None
        self._body = []
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif stream is not None:
            stream.fail(error)

    def _close_delimited(self) -> bool:
        """The body of the answer being read ends when the connection does (no length, not chunked)."""
        headers = self._headers
        return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()

    # --- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (TCP or TLS)
        self._pool._all.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock is not None and hasattr(select, "poll"):
            with contextlib.suppress(OSError, ValueError):
                self._poll = poller = select.poll()
                poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._pool.forget(self)
        if not self.closed.done():
            self.closed.set_result(None)
        if self._waiter is None:
            return
        if self._status and not self._in_head and not self._dirty and self._close_delimited():
            self._keep = False
            self._finish()  # the close is the end of the body
            return
        where = self._pool.where
        cause = f" ({exc})" if exc else ""
        if self.received:
            self._fail(UpstreamConnectionError(f"{where} cut the response short{cause}"))
        else:
            self._fail(UpstreamConnectionError(f"{where} closed the connection before answering{cause}"))

    def eof_received(self) -> bool:
        self._pool.forget(self)  # at once: connection_lost comes an iteration later
        return False  # the server is done with this connection: close it

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the framing can no longer be trusted
            self._dirty = True
            self._pool.forget(self)
            self.abort()
            return
        self.received = True
        size = self._size
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._halted(exc)
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._dirty = True
            if self._complete:  # e.g. bytes after a `connection: close` answer: the answer stands
                self._finish()
                return
            self.fail(UpstreamBadResponseError(f"{self._pool.where} sent a malformed HTTP response ({exc})"))
            return
        if self._complete:
            self._finish()
        elif self._in_head:
            # httptools accumulates a header line before we see it: a line that never ends must not grow
            # without bound. Every byte of this exchange so far belongs to a header section (1xx or final).
            self._head_raw += len(data)
            if self._head_raw > MAX_HEADER_BYTES:
                self._dirty = True
                self.fail(self._head_too_large())
        elif self._size == size:
            # a read without one body byte: chunk framing, extensions or trailers (a trailer line, too,
            # is accumulated by httptools). As much as a header section between body bytes, no more.
            # Twice the head's limit: the read that ended the head counts, head bytes and all.
            self._head_raw += len(data)
            if self._head_raw > 2 * MAX_HEADER_BYTES:
                self._dirty = True
                self.fail(UpstreamBadResponseError(
                    f"{self._pool.where} sent over {2 * MAX_HEADER_BYTES} bytes of chunk framing or trailers "
                    "without a body byte"))
        else:
            self._head_raw = 0

    def _halted(self, exc: httptools.HttpParserCallbackError) -> None:
        """A callback stopped llhttp mid-read: the parser is spent, so the connection is too."""
        self._dirty = True
        error = self._halt
        if error is None and not self._complete:  # not ours: a bug in a callback, reported as the upstream's
            error = UpstreamBadResponseError(f"{self._pool.where} sent a response we could not parse ({exc})")
        if error is None:  # the answer was complete and more bytes followed: deliver it, drop the connection
            self._finish()
        else:
            self.fail(error)

    def _head_too_large(self) -> LabgateError:
        return UpstreamBadResponseError(
            f"{self._pool.where} sent a header section over the limit "
            f"({MAX_HEADER_COUNT} lines, {MAX_HEADER_BYTES} bytes)")

    # --- parser callbacks

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer (or anything) after a complete one, in the same read
            raise _Halt
        # a final answer after a 1xx: start its head afresh
        self._headers = {}
        self._repeated = None
        self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        # Lines are counted without a counter per line: a head's distinct names are len(_headers), checked
        # at its end; a repeated name or a trailer adds to _head_lines and is checked at once (against
        # both). Until the end of the head the byte limit bounds the lines (at most one per 5 bytes).
        size = self._head_bytes = self._head_bytes + len(name) + len(value) + 4
        if size > MAX_HEADER_BYTES:
            self._halt = self._head_too_large()
            raise _Halt
        if not self._in_head:  # a trailer (after a chunked body): counted against the limits, not kept
            self._head_lines += 1
            if self._head_lines + len(self._headers) > MAX_HEADER_COUNT:
                self._halt = self._head_too_large()
                raise _Halt
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        if key not in headers:
            headers[key] = text
        else:  # joined once, at the end of the head: linear in the number of lines
            self._head_lines += 1
            if self._head_lines + len(headers) > MAX_HEADER_COUNT:
                self._halt = self._head_too_large()
                raise _Halt
            previous = headers[key]
            repeated = self._repeated
            if repeated is None:
                self._repeated = repeated = {}
            values = repeated.get(key)
            if values is None:
                repeated[key] = [previous, text]
            else:
                values.append(text)

    def on_headers_complete(self) -> None:
        self._in_head = False
        headers = self._headers
        if self._head_lines + len(headers) > MAX_HEADER_COUNT:
            self._halt = self._head_too_large()
            raise _Halt
        status = self._parser.get_status_code()
        if status < 100:  # llhttp takes any three digits; 0xx is no HTTP status at all
            self._halt = UpstreamBadResponseError(f"{self._pool.where} sent the invalid status {status:03d}")
            raise _Halt
        if status < 200:
            self._interim += 1  # 100 Continue, 103 Early Hints: the real answer follows
            if self._interim > MAX_INTERIM:
                self._halt = UpstreamBadResponseError(f"{self._pool.where} sent more than {MAX_INTERIM} "
                                                      "interim (1xx) responses")
                raise _Halt
            self._head_lines = self._head_bytes = self._head_raw = 0
            return
        self._head_raw = 0
        repeated = self._repeated
        if repeated is not None:
            for key, values in repeated.items():
                headers[key] = ", ".join(values)
        if status >= 300:
            self._limit = MAX_ERROR_BODY
        else:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self._limit:
                self._halt = self._too_large(f"announced a {length}-byte body")
                raise _Halt
        self._status = status
        stream = self._stream
        if stream is not None:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result((status, headers, stream))
        if self._no_body:
            self._complete = True
            self._keep = False  # llhttp would wait for the body a HEAD answer announces

    def _too_large(self, what: str) -> LabgateError:
        return UpstreamBadResponseError(
            f"{self._pool.where} {what}, over the limit of {self._pool.max_body} bytes (max_response_bytes)",
            code=TOO_LARGE)

    def on_body(self, body: bytes) -> None:
        self._size = size = self._size + len(body)
        if size > self._limit:
            if self._status < 300:
                self._halt = self._too_large("sent a body")
                raise _Halt
            body = body[:len(body) - (size - self._limit)]  # an error body: keep its start, stop reading
            self._complete = True
            self._keep = False
        stream = self._stream
        if stream is None:
            self._body.append(body)
        else:
            stream.feed(body)
        if self._complete:
            raise _Halt  # deliver what we have (``_halted``); the rest is never read

    def on_message_complete(self) -> None:
        if self._status == 0:  # the end of a 1xx answer
            return
        if not self._complete:
            self._complete = True
            self._keep = self._parser.should_keep_alive()  # only valid inside this callback

    # --- flow and closing

    def pause(self) -> None:
        if not self._paused and not self.lost:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self._paused and not self.lost:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def drop_slot(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self._pool._free_slot()

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()
