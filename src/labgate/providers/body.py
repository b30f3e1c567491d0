"""A streamed upstream body between its connection (the producer) and one reader, with flow control.

The connection (:class:`labgate.providers.connection.Connection`) feeds chunks as
llhttp parses them; the reader takes everything received so far at each
read. When the reader lags ``_PAUSE_ABOVE`` bytes behind, the connection
stops reading from the socket until it catches up, so a slow client never
makes us buffer an upstream's stream.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from labgate.errors import LabgateError, UpstreamTimeoutError

if TYPE_CHECKING:
    from labgate.providers.connection import Connection

_PAUSE_ABOVE = 256 * 1024  # stop reading a stream whose consumer lags this many bytes behind


class BodyQueue:
    """A streamed body between the connection (producer) and one reader, with flow control."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_size", "_waiter")

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn  # None once the body is complete or failed
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: LabgateError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._size > _PAUSE_ABOVE and self._conn is not None:
            self._conn.pause()

    def finish(self) -> None:
        self._done = True
        self._conn = None
        self._wake()

    def fail(self, error: LabgateError) -> None:
        self._error = error
        self._conn = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, idle_timeout: float) -> bytes:
        """Everything received since the last read; b"" at the end. Waits at most ``idle_timeout``."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            await self._wait(idle_timeout)
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._conn is not None:
            self._conn.resume()
        return data

    async def _wait(self, idle_timeout: float) -> None:
        conn = self._conn
        assert conn is not None
        loop = conn.loop
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(idle_timeout, self._idle_timeout, conn, idle_timeout)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _idle_timeout(self, conn: Connection, idle_timeout: float) -> None:
        if self._conn is conn:
            self.fail(UpstreamTimeoutError(
                f"{conn.where} sent nothing for {idle_timeout:g} s in the middle of a stream"))
            conn.cut(self)

    def close(self) -> None:
        """The reader is done: a body not yet complete cuts its connection (it cannot be reused)."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._done = True
            conn.cut(self)
