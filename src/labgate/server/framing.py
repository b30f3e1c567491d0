"""Request framing: llhttp's callbacks (via httptools) turned into ``Request`` objects, within limits.

llhttp finds the message boundaries; this module holds what it hands over and enforces the rest:

- sizes: the request line and header fields (``max_header_bytes``, 431), trailer fields counted
  against the same budget and never merged into the request's headers; a line still being received
  counts too (httptools buffers it before we see it); the body (``max_body_bytes``, 413), read into
  one buffer whatever its chunking (a list of small pieces costs far more than the bytes);
- RFC 9112: a ``Host`` header on HTTP/1.1, exactly one (400); only HTTP/1.0 and 1.1 (505); only the
  ``chunked`` transfer coding (501 for others; 400 for a repeated ``chunked``); an HTTP/1.0 message
  with ``Transfer-Encoding`` is the connection's last (§6.1), as is one that asked for ``close``, an
  upgrade (not supported: answered, then closed); a ``Content-Length`` too long to be a length: 400.

Per request this costs one ``dict`` for the headers and, only when the body arrives in more than one
piece, one ``bytearray``.
"""

from __future__ import annotations

import logging
from typing import Protocol

import httptools

from labgate.errors import (
    BodyTooLargeError,
    HeaderTooLargeError,
    InternalError,
    LabgateError,
    RequestError,
    UnsupportedFramingError,
)
from labgate.server.deadlines import Deadlines
from labgate.server.limits import ServerLimits
from labgate.server.messages import Request

log = logging.getLogger("labgate.server")

_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
_MAX_LENGTH_DIGITS = 19  # a Content-Length longer than this is not a length any body here can have


class RequestSink(Protocol):
    """What the reader tells its connection."""

    def request_ready(self, request: Request, keep_alive: bool, http10: bool) -> None: ...
    def continue_wanted(self) -> None: ...
    def stop_reading(self, error: LabgateError | None) -> None: ...


class _AfterLast(Exception):
    """A request began after the connection's last one: parse no further."""


class RequestReader:
    """Feeds one connection's bytes to llhttp and hands each complete request to the connection."""

    __slots__ = ("_body", "_body_size", "_client", "_deadlines", "_fresh", "_head_size", "_headers", "_http10",
                 "_in_head", "_limits", "_open", "_open_raw", "_parser", "_sink", "_url", "in_message", "last")

    def __init__(self, sink: RequestSink, limits: ServerLimits, deadlines: Deadlines, client: str | None) -> None:
        self._sink = sink
        self._limits = limits
        self._deadlines = deadlines
        self._client = client
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}  # also read by the connection to render an error's request id
        self._body: bytes | bytearray = b""
        self._body_size = 0
        self._head_size = 0  # request line, header and trailer field bytes, as parsed
        self._open = False  # a header or trailer section is being received: its raw bytes count (see feed)
        self._open_raw = 0
        self._fresh = False  # the section opened in the packet being fed
        self._in_head = False
        self._http10 = False
        self.in_message = False  # a request began and is not complete yet
        self.last = False  # the request read last is the connection's last: parse nothing after it

    @property
    def headers(self) -> dict[str, str]:
        """The headers of the request being read (or read last), as far as they were read."""
        return self._headers

    def feed(self, data: bytes) -> None:
        """Parse ``data``; complete requests go to the sink, and so does the reason to stop reading."""
        self._fresh = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._sink.stop_reading(None)  # no upgrades: answer the request, then close
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _AfterLast):
                self._sink.stop_reading(None)
                return
            if not isinstance(cause, LabgateError):
                log.error("failed to parse a request", exc_info=cause)
                cause = InternalError("internal error")
            self._sink.stop_reading(cause)
            return
        except httptools.HttpParserError as exc:
            # llhttp refuses bytes after a message that closes the connection: nothing to answer
            self._sink.stop_reading(None if self.last else RequestError(f"Malformed HTTP request: {exc}."))
            return
        # httptools accumulates a header or trailer line before we see it; a line that never ends must
        # not grow without bound. Count whole packets received while the section stays open (not the
        # one that opened it, which may hold a previous message's tail).
        if self._open and not self._fresh:
            self._open_raw += len(data)
            if self._open_raw > self._limits.max_header_bytes:
                self._sink.stop_reading(_header_too_large())

    # --- llhttp callbacks

    def on_message_begin(self) -> None:
        if self.last:
            raise _AfterLast
        self._url = b""
        self._headers = {}
        self._body = b""
        self._body_size = self._head_size = self._open_raw = 0
        self._in_head = self._open = self._fresh = self.in_message = True
        deadlines = self._deadlines  # deadlines.reading(), without its call when the timer is armed
        deadlines.read_since = deadlines.clock()
        if deadlines.handle is None:
            deadlines.reading()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._limits.max_header_bytes:
            raise _header_too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_size + len(name) + len(value) + 4
        self._head_size = size
        if size > self._limits.max_header_bytes:
            raise _header_too_large()
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
            if len(length) > _MAX_LENGTH_DIGITS:
                raise RequestError(f"Invalid Content-Length ({len(length)} digits).")
            max_body = self._limits.max_body_bytes
            if int(length) > max_body:
                raise BodyTooLargeError(f"The request body is {int(length)} bytes; the limit is {max_body}.")
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.lower() != "chunked":
                _check_codings(coding)
            if http10:
                self.last = True  # RFC 9112 §6.1: HTTP/1.0 framing is faulty with it; close after
        expect = headers.get("expect")
        if expect is not None and expect.lower() == "100-continue" and not http10:
            self._sink.continue_wanted()

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
        self._open = self.in_message = False
        parser = self._parser
        method = parser.get_method()
        path, query = split_target(self._url)
        body = self._body
        keep_alive = parser.should_keep_alive() and not self.last
        if not keep_alive:
            self.last = True
        self._sink.request_ready(
            Request(_METHODS.get(method) or method.decode("latin-1"), path, query, self._headers,
                    body if type(body) is bytes else bytes(body), self._client),
            keep_alive, self._http10)


def _check_codings(value: str) -> None:
    """Only ``chunked``, once and last, is a transfer coding we read (RFC 9112 §6.1, §6.3)."""
    codings = [c.strip().lower() for c in value.split(",") if c.strip()]
    if codings[-1:] != ["chunked"]:
        raise RequestError("The request's last transfer coding is not chunked: its length is unknown.")
    if codings.count("chunked") > 1:
        raise RequestError("The chunked transfer coding is applied more than once.")
    unknown = ", ".join(repr(c[:40]) for c in codings[:-1][:3])
    if unknown:
        raise UnsupportedFramingError(f"Transfer coding {unknown} is not supported; send the body "
                                      "with Content-Length or chunked alone.")


def split_target(url: bytes) -> tuple[str, str]:
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
