"""HTTP/1.1 to upstreams over pooled keep-alive connections: the one place transport failures become ours.

Every adapter talks to its upstream through an :class:`HttpPool`, which
frames requests and applies timeouts over the connections of
:mod:`labgate.providers.pool` (asyncio protocols parsed by llhttp, like our
server). Every failure leaves here as a labgate error naming the provider, as
httpx does in ``map_httpcore_exceptions``.

Why not aiohttp's client: measured on one core under uvloop against a raw
asyncio upstream, the aiohttp-based pool cost ~200 µs CPU per sequential
request, ~90 µs at 16 concurrent and ~210 µs per 20-chunk stream; this one
~65, ~17 and ~130 µs. We use none of what aiohttp adds (cookies, redirects,
decompression, proxies, multipart).

Bodies pass through untouched: no ``accept-encoding`` is sent, so upstreams
answer with identity encoding.

Upstream text that becomes our error message (an error body, a snippet of a
body that is not JSON) is redacted here (:func:`labgate.redact.redact`, with
the provider's own configured credentials), so the client, the log, history
and ``/health/providers`` never see a key an upstream echoed back.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from email.utils import parsedate_to_datetime
from time import time
from urllib.parse import urlsplit

import orjson

from labgate.errors import (
    LabgateError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamDeploymentError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from labgate.providers.body import BodyQueue
from labgate.providers.connection import DEFAULT_MAX_BODY, Answer, Connection
from labgate.providers.pool import Pool
from labgate.redact import redact, secrets_in

_DEFAULT_PORTS = {"http": 80, "https": 443}
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
# RFC 9110 9.2.2: these may be sent again when a reused connection fails before any answer.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
MAX_RETRY_AFTER_S = 3600.0  # an upstream's Retry-After is clamped to [0, this]
_MESSAGE_CHARS = 1000  # an upstream's error message is cut to this many characters


def error_for_status(status: int, body: bytes, headers: Mapping[str, str], where: str, *,
                     secrets: Iterable[str] = ()) -> LabgateError:
    """The error an upstream's non-2xx answer stands for (both dialects carry ``error.message``).

    The message is the upstream's, redacted (``secrets``: the provider's own credentials).
    """
    message = redact(_error_message(body)[:_MESSAGE_CHARS], secrets)
    text = f"{where} answered {status}: {message}"
    if status == 429:
        return UpstreamRateLimitError(text, retry_after=_retry_after(headers))
    if status == 408:
        return UpstreamTimeoutError(text)
    if status >= 500:
        return UpstreamStatusError(text, upstream_status=status)
    if status in (401, 403, 404):
        return UpstreamDeploymentError(text, upstream_status=status)
    param = _error_param(body)
    return UpstreamRejectedError(text, status=status, param=None if param is None else redact(param[:100]))


def _error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        snippet = body[:200].decode("utf-8", "replace").strip()
        return snippet or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    return str(data)[:200]


def _error_param(body: bytes) -> str | None:
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else None


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date), clamped to
    [0, ``MAX_RETRY_AFTER_S``]; None when absent or not a number (``inf``, ``nan``, garbage)."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return retry_after(headers.get("retry-after") or headers.get("Retry-After"))


def upstream_snippet(data: bytes | str | None, chars: int = 80) -> str:
    """A short, redacted quote of upstream bytes (quoted as bytes) or text, for an error message."""
    if isinstance(data, bytes):
        return repr(redact(data[:chars].decode("latin-1")).encode("latin-1"))
    return repr(redact(str(data)[:chars]))


def parse_json(body: bytes, where: str) -> object:
    """Decode an upstream JSON body, or say clearly that it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        snippet = upstream_snippet(body[:80].decode("utf-8", "replace"))
        raise UpstreamBadResponseError(f"{where} sent a body that is not JSON: {snippet}") from exc


class UpstreamStream:
    """An open streaming response: status is 2xx; iterate the raw (de-chunked) body bytes."""

    __slots__ = ("_body", "idle_timeout", "where")

    def __init__(self, body: BodyQueue, where: str, idle_timeout: float) -> None:
        self._body = body
        self.where = where
        self.idle_timeout = idle_timeout

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, waiting at most ``idle_timeout`` for each piece; raises only our errors."""
        body = self._body
        try:
            while True:
                chunk = await body.read(self.idle_timeout)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def close(self) -> None:
        """Stop reading; an unfinished body's connection is closed, not reused."""
        self._body.close()


class HttpPool:
    """Keep-alive HTTP/1.1 to one upstream base URL (``http`` or ``https``).

    ``max_connections`` > 0 bounds the connections open at once; further
    requests queue, first come first served, within their timeout.
    """

    __slots__ = ("_fixed", "_pool", "_prefix", "base_url", "name", "secrets", "where")

    def __init__(self, base_url: str, *, name: str, headers: Mapping[str, str],
                 max_connections: int = 0, max_response_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.where = f"provider {name!r}"
        url = urlsplit(self.base_url)
        if url.scheme not in _DEFAULT_PORTS or not url.hostname:
            raise ValueError(f"{self.where}: base URL {base_url!r} is not an http:// or https:// URL")
        port = url.port or _DEFAULT_PORTS[url.scheme]
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        if port != _DEFAULT_PORTS[url.scheme]:
            host = f"{host}:{port}"
        fixed = {"host": host, "content-type": "application/json"}
        for key, value in headers.items():
            if key.lower() in _FRAMING:
                raise ValueError(f"{self.where}: header {key!r} is set by the HTTP client, not by config")
            fixed[key.lower()] = value
        self.secrets = secrets_in(fixed)  # what an upstream could echo back: masked in its error text
        lines = "".join(f"{key}: {value}\r\n" for key, value in fixed.items())
        if lines.count("\n") != len(fixed) or lines.count("\r") != len(fixed):
            raise ValueError(f"{self.where}: a header name or value contains CR or LF")
        self._fixed = (lines + "connection: keep-alive\r\n").encode("latin-1")
        self._prefix = url.path.encode("ascii")
        self._pool = Pool(url.hostname, port, tls=url.scheme == "https", where=self.where,
                          limit=max_connections, max_body=max_response_bytes)

    def error_for(self, status: int, body: bytes, headers: Mapping[str, str]) -> LabgateError:
        """:func:`error_for_status` for this upstream, its own credentials masked in the message."""
        return error_for_status(status, body, headers, self.where, secrets=self.secrets)

    def _message(self, method: str, path: str, body: bytes | None, extra: bytes = b"") -> bytes:
        """The request as written: one buffer, so one write and (under TCP_NODELAY) one segment for small bodies.

        ``extra``: header lines for this request only, each ending in CRLF (the trace context)."""
        target = self._prefix + path.encode("ascii")
        if body is None and (method == "GET" or method == "HEAD"):
            return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method.encode("ascii"), target, extra, self._fixed)
        body = body or b""
        return b"%s %s HTTP/1.1\r\n%s%scontent-length: %d\r\n\r\n%s" % (
            method.encode("ascii"), target, extra, self._fixed, len(body), body)

    async def request(self, method: str, path: str, body: bytes | None = None, *,
                      timeout: float, extra_headers: bytes = b"") -> tuple[int, Mapping[str, str], bytes]:
        """One whole request within ``timeout`` s; returns status, headers (lower-case names) and body.

        Raises only our errors. A reused connection that fails before any byte of
        the answer is retried once, on a newly opened connection (the other idle
        ones may have gone stale the same way), for idempotent methods only: a POST
        may have been processed although no answer came back (Go's ``net/http``
        and aiohttp draw the same line). Connections the server closed while idle
        are never handed out, so that race stays narrow.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        data = self._message(method, path, body, extra_headers)
        no_body = method == "HEAD"
        conn = await self._pool.acquire(deadline)
        reused = conn.uses > 0
        while True:
            waiter = conn.send(data, stream=False, no_body=no_body)
            timer = loop.call_at(deadline, conn.time_out, waiter, timeout)  # _answer(), without its frame
            try:
                return await waiter  # type: ignore[return-value]  # bytes when not streaming
            except asyncio.CancelledError:
                conn.abandon(waiter)
                raise
            except UpstreamConnectionError:
                if not reused or conn.received or method not in _IDEMPOTENT:
                    raise
            finally:
                timer.cancel()
            reused = False  # the retry's connection is a new one: never retried again
            conn = await self._pool.acquire_new(deadline)

    async def open_stream(self, path: str, body: bytes, *, timeout: float,
                          extra_headers: bytes = b"") -> UpstreamStream:
        """POST and wait at most ``timeout`` s for a 2xx head; non-2xx raises the matching upstream error.

        The stream then waits at most ``timeout`` s for each piece of the body.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self._pool.acquire(deadline)
        waiter = conn.send(self._message("POST", path, body, extra_headers), stream=True)
        status, headers, queue = await self._answer(conn, waiter, deadline, timeout)
        assert isinstance(queue, BodyQueue)
        if status >= 300:  # its body is read up to connection.MAX_ERROR_BODY bytes, within the deadline
            try:
                error = b"".join([chunk async for chunk in self._error_body(queue, deadline, loop)])
            finally:
                queue.close()
            raise self.error_for(status, error, headers)
        return UpstreamStream(queue, self.where, timeout)

    @staticmethod
    async def _answer(conn: Connection, waiter: asyncio.Future[Answer], deadline: float, timeout: float) -> Answer:
        """The answer (its head, for a stream) by ``deadline``; a caller that gives up cuts the connection."""
        timer = conn.loop.call_at(deadline, conn.time_out, waiter, timeout)
        try:
            return await waiter
        except asyncio.CancelledError:
            conn.abandon(waiter)
            raise
        finally:
            timer.cancel()

    @staticmethod
    async def _error_body(queue: BodyQueue, deadline: float,
                          loop: asyncio.AbstractEventLoop) -> AsyncIterator[bytes]:
        while chunk := await queue.read(max(deadline - loop.time(), 0.0)):
            yield chunk

    async def aclose(self) -> None:
        """Close every connection (exchanges in flight fail); the pool serves no more requests."""
        await self._pool.aclose()


async def fetch(url: str, *, timeout: float, name: str = "probe") -> tuple[int, bytes]:
    """One GET on a fresh connection (discovery, health checks): status and body, or our error."""
    split = urlsplit(url)
    base = f"{split.scheme}://{split.netloc}"
    path = (split.path or "/") + (f"?{split.query}" if split.query else "")
    pool = HttpPool(base, name=name, headers={})
    try:
        status, _, body = await pool.request("GET", path, timeout=timeout)
        return status, body
    finally:
        await pool.aclose()
