"""A pooled upstream connection driven by hand, for tests: each read is exactly what the test hands it.

Over a socket the kernel decides where reads split; here the test does, so the
limits of :mod:`labgate.providers.connection` that count bytes per read (a
header section still open, chunk framing between body bytes) can be tested at
their exact edges, and anything that happens between two reads (a caller that
cancels) at a chosen point:

    wire = Scripted(asyncio.get_running_loop())
    answer = wire.send()
    wire.feed(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\n", b"{}")
    assert answer.result()[2] == b"{}" and wire.pooled

The connection belongs to a real :class:`~labgate.providers.pool.Pool` (never
connected), so what happens to it after the exchange (pooled or closed) is the
pool's own bookkeeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

from labgate.providers.pool import DEFAULT_MAX_BODY, Answer, Connection, Pool

REQUEST = b"POST /x HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n"


class ScriptedTransport(asyncio.Transport):
    """Records what is written; closing or aborting only marks it closing (``connection_lost`` is the test's)."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Scripted:
    """One :class:`Connection` to ``provider 'up'``, made on a :class:`ScriptedTransport`, holding its slot."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.pool = Pool("up", 80, tls=False, where="provider 'up'", max_body=max_body)
        self.conn = Connection(self.pool, loop)
        self.transport = ScriptedTransport()
        self.conn.connection_made(self.transport)
        self.pool._open = 1

    def send(self, request: bytes = REQUEST, *, stream: bool = False, no_body: bool = False) -> asyncio.Future[Answer]:
        return self.conn.send(request, stream=stream, no_body=no_body)

    def feed(self, *reads: bytes) -> None:
        """Each of ``reads`` as one ``data_received``, until the connection is closed."""
        for data in reads:
            if self.transport.closing:
                return
            self.conn.data_received(data)

    @property
    def pooled(self) -> bool:
        """Back in the pool, idle and open: ready for the next request."""
        return self.pool.idle == 1 and not self.transport.closing
