"""Keep-alive HTTP/1.1 connections to one upstream: the pool (the protocol each connection runs: connection.py).

The pool hands out the idle connection used last (so the others age and
expire after ``IDLE_EXPIRY_S``), opens new ones as needed and, when
``limit`` > 0, queues callers FIFO once ``limit`` connections are open or
opening. A pooled connection the server has closed is dropped as soon as the
loop sees the close (``connection_lost``), so it is never handed out, and one
is reused only when it is known clean (see :mod:`labgate.providers.connection`):
before reuse the kernel is asked with one ``poll(2)`` of zero timeout (~0.5 µs,
only on reuse) whether anything unasked-for waits in its socket; if so it is
dropped. A retry gets a newly opened connection (:meth:`Pool.acquire_new`).

Every failure comes out as a labgate error naming the provider; callers
(``providers/http.py``) decide about retries and status codes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from functools import cache

from labgate.errors import DeploymentBusyError, UpstreamConnectionError, UpstreamTimeoutError
from labgate.providers.connection import (  # the limits are the connection's; importable from here too
    DEFAULT_MAX_BODY,
    MAX_ERROR_BODY,
    MAX_HEADER_BYTES,
    MAX_HEADER_COUNT,
    MAX_INTERIM,
    TOO_LARGE,
    Answer,
    Connection,
)

__all__ = ["DEFAULT_MAX_BODY", "IDLE_EXPIRY_S", "MAX_ERROR_BODY", "MAX_HEADER_BYTES", "MAX_HEADER_COUNT",
           "MAX_INTERIM", "TOO_LARGE", "Answer", "Connection", "Pool", "tls_context"]

IDLE_EXPIRY_S = 30.0  # an idle pooled connection is closed after this long
_CLOSE_WAIT_S = 1.0  # how long aclose waits for the transports to report closed


@cache
def tls_context() -> ssl.SSLContext:
    """The system's trust store and defaults, built once (loading CA certificates takes milliseconds)."""
    return ssl.create_default_context()


class Pool:
    """Keep-alive connections to one ``host:port``, at most ``limit`` of them (0: no limit)."""

    __slots__ = ("_all", "_closed", "_idle", "_open", "_sweeper", "_waiters", "host", "limit", "max_body", "port",
                 "tls", "where")

    def __init__(self, host: str, port: int, *, tls: bool, where: str, limit: int = 0,
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.where = where  # "provider 'x'", for messages
        self.limit = limit
        self.max_body = max_body  # bytes of a 2xx body; more is an error (UpstreamBadResponseError, TOO_LARGE)
        self._idle: dict[Connection, None] = {}  # insertion order = idle since; popitem() takes the newest
        self._all: set[Connection] = set()  # connected, idle or busy
        self._open = 0  # connections open or opening: each holds one of the ``limit`` slots
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def open(self) -> int:
        return self._open

    async def acquire(self, deadline: float) -> Connection:
        """A connection ready for one request: idle, new, or the next one freed (FIFO) at the limit."""
        idle = self._idle
        while True:
            while idle:
                conn = idle.popitem()[0]
                transport = conn.transport  # conn.ready(), without its frame
                if not (conn._dirty or conn.lost or transport is None or transport.is_closing()):
                    poller = conn._poll
                    try:
                        if poller is None or not poller.poll(0):
                            return conn
                    except (OSError, ValueError):  # closed under us
                        pass
                    conn._dirty = True
                conn.abort()
            if self._closed:
                raise UpstreamConnectionError(f"{self.where}: the connection pool is closed")
            if self.limit and self._open >= self.limit:
                handed = await self._wait_turn(deadline)
                if handed is None:
                    return await self._connect(deadline)
                if handed.ready():
                    return handed
                # it turned dirty or was closed between the hand-over and now: its slot went on; queue again
                handed.abort()
                continue
            self._open += 1
            return await self._connect(deadline)

    async def acquire_new(self, deadline: float) -> Connection:
        """A newly opened connection, for a retry (the idle ones may be as stale as the one that failed).

        At the limit it takes the slot of the oldest idle connection (closed), else waits its turn.
        """
        if self._closed:
            raise UpstreamConnectionError(f"{self.where}: the connection pool is closed")
        if self.limit and self._open >= self.limit:
            idle = self._idle
            spare = next(iter(idle)) if idle else await self._wait_turn(deadline)
            if spare is not None:  # its slot passes to the new connection
                idle.pop(spare, None)
                spare.holds_slot = False
                spare.close()
        else:
            self._open += 1
        return await self._connect(deadline)

    async def _wait_turn(self, deadline: float) -> Connection | None:
        """Queue for a connection (returned) or a free slot (None: open one)."""
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # handed over just as we gave up: pass it on
                if handed is None:
                    self._free_slot()
                else:
                    self.put(handed)
            if isinstance(exc, TimeoutError):  # busy is not broken: not a failure of the upstream
                raise DeploymentBusyError(
                    f"{self.where} is busy: no free connection within the time left "
                    f"(all {self.limit} in use)") from None
            raise

    async def _connect(self, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(self, loop)
        tls = tls_context() if self.tls else None
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(lambda: conn, self.host, self.port, ssl=tls,
                                             server_hostname=self.host if tls else None)
        except BaseException as exc:
            conn.drop_slot()
            if conn.transport is not None:
                conn.transport.abort()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeoutError(
                    f"{self.where} timed out connecting to {self.host}:{self.port}") from None
            if isinstance(exc, OSError):  # refused, unreachable, DNS (gaierror), TLS (SSLError)
                raise UpstreamConnectionError(
                    f"cannot connect to {self.where} at {self.host}:{self.port} ({exc})") from exc
            raise
        if self._closed:
            conn.abort()
            raise UpstreamConnectionError(f"{self.where}: the connection pool is closed")
        return conn

    def put(self, conn: Connection) -> None:
        """``conn`` finished an exchange and may serve another: to the first waiter, else idle."""
        transport = conn.transport  # clean and connected: the first test of Connection.ready
        if self._closed or conn._dirty or conn.lost or transport is None or transport.is_closing():
            conn.close()
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = conn.loop.time()
        self._idle[conn] = None
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + IDLE_EXPIRY_S, self._sweep)

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed: never hand it out again, and free its slot."""
        self._idle.pop(conn, None)
        self._all.discard(conn)
        conn.drop_slot()

    def _free_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter, which opens a connection
                return
        self._open -= 1

    def _sweep(self) -> None:
        """Close the connections idle for ``IDLE_EXPIRY_S``; come back when the next one will be."""
        self._sweeper = None
        idle = self._idle
        if not idle:
            return
        loop = next(iter(idle)).loop
        expired_before = loop.time() - IDLE_EXPIRY_S
        for conn in list(idle):  # oldest first
            if conn.idle_since > expired_before:
                self._sweeper = loop.call_at(conn.idle_since + IDLE_EXPIRY_S, self._sweep)
                return
            del idle[conn]
            conn.close()

    async def aclose(self) -> None:
        """Close every connection, aborting exchanges in flight; later requests fail."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectionError(f"{self.where}: the connection pool was closed"))
        self._idle.clear()
        conns = list(self._all)
        for conn in conns:
            conn.fail(UpstreamConnectionError(f"{self.where}: the connection pool was closed"))
        if conns:
            await asyncio.wait([conn.closed for conn in conns], timeout=_CLOSE_WAIT_S)
