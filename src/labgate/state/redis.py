"""Redis state: shared by every replica, one round trip per request-path operation.

:class:`RedisLink` holds the client (redis-py's asyncio API with the hiredis
parser, no client-side retries) and the backend's health: after a failure it
rests for ``state.retry_s`` (every operation meanwhile raises at once,
without I/O), logs the outage once and the recovery once, and counts
failures. redis-py's exceptions are turned into
:class:`~labgate.state.base.StateUnavailableError` here and nowhere else.

The request path (:meth:`RedisLink.command`: ``GET``, ``SET … PX``) keeps its
own free list of redis-py connections, at most ``state.max_connections``,
and talks to them directly (``send_command`` / ``read_response``) under one
``asyncio.timeout``: measured at about half the gateway CPU per ``GET`` of
redis-py's pooled client with socket timeouts (whose pool takes a lock and
records observability events on every command). A connection that failed
or timed out mid-command is dropped, never reused. When every connection is
busy a command waits for the next one released (at most ``timeout_s``; then
it is skipped, counted as ``busy``, without marking Redis down). Admin
operations (``SCAN`` never ``KEYS``, pipelines, ``UNLINK`` in batches) use
redis-py's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from labgate.state.base import KeyInfo, StateUnavailableError

log = logging.getLogger("labgate.state")
SCAN_COUNT = 1000  # keys asked for per SCAN step
BATCH = 500  # commands per pipeline in admin operations
ADMIN_TIMEOUT_S = 30.0  # one admin step (a SCAN page, a pipeline, an UNLINK batch)


def import_client() -> Any:
    """redis-py's asyncio API (imported once; ``labgate serve`` does it before listening)."""
    try:
        import redis.asyncio as aredis
    except ImportError as exc:  # the optional extra
        raise RuntimeError("a Redis state backend needs the redis client: pip install 'labgate[redis]'") from exc
    return aredis


def display_url(url: str) -> str:
    """The URL without its password, for logs and admin output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLink:
    """One pooled Redis client and the health of the server behind it (fail open, log once)."""

    def __init__(self, url: str, *, timeout_s: float, retry_s: float, max_connections: int) -> None:
        aredis = import_client()
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = display_url(url)
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.source: object = None  # what it was built from: a reload with the same settings keeps it
        self.errors: tuple[type[BaseException], ...] = (aredis.RedisError, OSError, TimeoutError)
        self.pool = aredis.ConnectionPool.from_url(url, max_connections=max_connections,
                                                   socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
        self.client = aredis.Redis(connection_pool=self.pool)  # admin operations
        self.max_connections = max_connections
        self._idle: list[Any] = []  # request-path connections ready for a command
        self._waiters: deque[asyncio.Future[Any]] = deque()  # commands waiting for a connection (all busy)
        self._open = 0  # request-path connections, idle or in use
        self.down_until = 0.0  # monotonic time until which Redis is left alone; 0: up
        self.failures = 0
        self.busy = 0  # operations skipped because every connection stayed in use for timeout_s
        self.last_error: str | None = None

    async def command(self, *args: Any) -> Any:
        """One command on a connection of the free list; StateUnavailableError when it cannot be done."""
        self.check()
        conn = await self._acquire()
        try:
            async with asyncio.timeout(self.timeout_s):
                await conn.send_command(*args)
                reply = await conn.read_response()
        except BaseException as exc:
            self._open -= 1  # mid-command: its state is unknown, so it is closed, never reused
            self._release(None)
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            if isinstance(exc, self.errors):
                raise self.failed(exc) from None
            raise
        self._release(conn)
        if self.down_until:
            self.succeeded()
        return reply

    async def _acquire(self) -> Any:
        """An idle connection, a new one (up to max_connections), or the next one released (within timeout_s)."""
        if self._idle:
            return self._idle.pop()
        if self._open < self.max_connections:
            self._open += 1
            return self.pool.make_connection()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await waiter
        except BaseException as exc:  # timed out, or the request was cancelled (its client left)
            self._pass_on(waiter)
            if not isinstance(exc, TimeoutError):
                raise
            self.busy += 1
            raise StateUnavailableError(f"every connection to Redis at {self.url} stayed in use") from None
        if conn is None:  # one was closed: this request may open its own, unless Redis went down meanwhile
            if self.down_until:
                self._release(None)  # the free slot goes on to the next waiter
                self.check()
            self._open += 1
            conn = self.pool.make_connection()
        return conn

    def _pass_on(self, waiter: asyncio.Future[Any]) -> None:
        """A waiter that gives up: what it was handed meanwhile goes to the next one, never lost.

        ``_release`` may have handed it a connection (or the right to open one: None) in the same
        loop iteration as its timeout or cancellation; dropping that would leak a slot of
        ``max_connections`` for good, and once all leaked every command would wait ``timeout_s``.
        """
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled():
            self._release(waiter.result())

    def _release(self, conn: Any) -> None:
        """Hand a connection (None: one was closed) to the next waiter, or back to the free list."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    def check(self) -> None:
        """Raise at once while resting after a failure."""
        if self.down_until and time.monotonic() < self.down_until:
            raise StateUnavailableError(f"Redis at {self.url} is unavailable ({self.last_error})")

    def failed(self, exc: BaseException) -> StateUnavailableError:
        """Record a failure (logged when Redis goes from up to down) and return the error to raise."""
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self.down_until:
            log.warning("state: Redis at %s is unavailable (%s); serving without it, retrying every %gs",
                        self.url, self.last_error, self.retry_s)
        self.down_until = time.monotonic() + self.retry_s
        return StateUnavailableError(f"Redis at {self.url} is unavailable ({self.last_error})")

    def succeeded(self) -> None:
        if self.down_until:
            self.down_until = 0.0
            log.warning("state: Redis at %s is back", self.url)

    def status(self) -> dict[str, object]:
        return {"url": self.url, "up": not self.down_until, "failures": self.failures, "busy": self.busy,
                "last_error": self.last_error}

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        with contextlib.suppress(*self.errors):  # closing connections to a dead server: nothing left to release
            for conn in idle:
                await conn.disconnect()
            await self.client.aclose()


class RedisEntries:
    """An :class:`~labgate.state.base.EntryStore` in Redis: string values with a PX expiry."""

    backend = "redis"

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.link.command("GET", key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.link.command("SET", key, value, "PX", max(1, int(ttl_s * 1000)))

    async def _scan(self, pattern: str) -> AsyncIterator[list[bytes]]:
        cursor: int = 0
        while True:
            async with asyncio.timeout(ADMIN_TIMEOUT_S):
                cursor, batch = await self.link.client.scan(cursor, match=pattern, count=SCAN_COUNT)
            if batch:
                yield batch
            if cursor == 0:
                return

    async def keys(self, pattern: str, *, limit: int) -> list[KeyInfo]:
        out: list[KeyInfo] = []
        try:
            async for batch in self._scan(pattern):
                batch = batch[: limit - len(out)]
                pipe = self.link.client.pipeline(transaction=False)
                for key in batch:
                    pipe.strlen(key)
                    pipe.pttl(key)
                async with asyncio.timeout(ADMIN_TIMEOUT_S):
                    answers = await pipe.execute()
                for i, key in enumerate(batch):
                    size, pttl = answers[2 * i], answers[2 * i + 1]
                    if pttl == -2:
                        continue  # expired between SCAN and PTTL
                    out.append(KeyInfo(key.decode(), int(size), None if pttl < 0 else pttl / 1000))
                if len(out) >= limit:
                    break
        except self.link.errors as exc:
            raise self.link.failed(exc) from None
        return out

    async def delete(self, pattern: str) -> int:
        deleted = 0
        try:
            async for batch in self._scan(pattern):
                for start in range(0, len(batch), BATCH):
                    async with asyncio.timeout(ADMIN_TIMEOUT_S):
                        deleted += await self.link.client.unlink(*batch[start:start + BATCH])
        except self.link.errors as exc:
            raise self.link.failed(exc) from None
        return deleted

    def status(self) -> dict[str, object]:
        return {"backend": self.backend, **self.link.status()}

    async def aclose(self) -> None:
        await self.link.aclose()
