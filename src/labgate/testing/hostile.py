"""A hostile HTTP/1.1 upstream for tests: a raw asyncio server whose every byte the test decides.

Unlike the simulator (a well-behaved aiohttp server), this one writes exactly
what a script returns for each request, including what no HTTP server should
send: a duplicate answer, two answers in one write, an answer nobody asked
for, a header flood, an endless body. Used by ``tests/security/`` to check
that the pooled client (``providers/pool.py``, ``providers/connection.py``) never hands one request's
answer to another and stays within its limits.

A script gets each request (:class:`Received`, with the ``marker`` its JSON
body carries) and returns steps, run in order on that connection:

- ``bytes``: written at once;
- ``float``: seconds to wait;
- :class:`WhenIdle`: written only if the client has not sent another request
  on this connection yet (nothing buffered, nothing in the socket), so an
  unsolicited answer is always *unsolicited*: were the next request already
  written, no client could tell the two apart (HTTP/1.1 has no request ids);
- :class:`Flood`: ``total`` bytes in ``chunk``-sized writes, with flow control,
  until done or the client hangs up;
- :data:`CLOSE`: close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the upstream read it."""

    head: bytes
    body: bytes
    connection: int  # which accepted connection carried it: 0, 1, ...
    index: int  # its position on that connection

    @property
    def marker(self) -> str:
        try:
            data = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return ""
        return str(data.get("m", "")) if isinstance(data, dict) else ""

    @property
    def path(self) -> str:
        return self.head.split(b" ", 2)[1].decode("latin-1")


@dataclass(frozen=True, slots=True)
class WhenIdle:
    data: bytes


@dataclass(frozen=True, slots=True)
class Flood:
    chunk: bytes
    total: int


class _Close:
    pass


CLOSE = _Close()
Step = bytes | float | WhenIdle | Flood | _Close
Script = Callable[[Received], Sequence[Step]]


def response(body: bytes = b"{}", *, status: str = "200 OK", headers: Sequence[str] = ()) -> bytes:
    """A whole answer with a ``content-length``."""
    head = "".join(f"{line}\r\n" for line in ("content-type: application/json", *headers))
    return f"HTTP/1.1 {status}\r\n{head}content-length: {len(body)}\r\n\r\n".encode() + body


def marked(marker: str, **extra: Any) -> bytes:
    """The JSON body that carries ``marker`` (what a request sends and the echo answers)."""
    return orjson.dumps({"m": marker, **extra})


def echo(request: Received) -> bytes:
    """The right answer to ``request``: its own marker back."""
    return response(marked(request.marker))


class _Peer(asyncio.Protocol):
    def __init__(self, upstream: HostileUpstream) -> None:
        self.upstream = upstream
        self.index = upstream.accepted
        upstream.accepted += 1
        self.buffer = bytearray()
        self.requests: asyncio.Queue[Received | None] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.count = 0
        self.lost = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._poll: Any = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)
        self.task = asyncio.get_running_loop().create_task(self.run())
        self.upstream._peers.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.upstream.hung_up += 1
        self._writable.set()
        self.requests.put_nowait(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end + 4])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            request = Received(head, body, self.index, self.count)
            self.count += 1
            self.upstream.requests.append(request)
            self.requests.put_nowait(request)

    def idle(self) -> bool:
        """No request waits: none buffered, none parsed, nothing unread in the socket."""
        if self.buffer or not self.requests.empty():
            return False
        return not (self._poll is not None and self._poll.poll(0))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)
            self.upstream.sent += len(data)

    async def run(self) -> None:
        while (request := await self.requests.get()) is not None:
            for step in self.upstream.script(request):
                if self.lost:
                    return
                if isinstance(step, bytes):
                    self.write(step)
                elif isinstance(step, float | int):
                    await asyncio.sleep(step)
                elif isinstance(step, WhenIdle):
                    if self.idle():
                        self.write(step.data)
                        self.upstream.unsolicited += 1
                    else:
                        self.upstream.skipped += 1
                elif isinstance(step, Flood):
                    await self._flood(step)
                elif isinstance(step, _Close) and self.transport is not None:
                    self.transport.close()
                    return

    async def _flood(self, flood: Flood) -> None:
        left = flood.total
        while left > 0 and not self.lost:
            piece = flood.chunk[:left]
            self.write(piece)
            left -= len(piece)
            await self._writable.wait()
            await asyncio.sleep(0)


class HostileUpstream:
    """``async with HostileUpstream(script) as up:`` serves on ``up.url`` until the block ends."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.accepted = 0  # connections accepted
        self.hung_up = 0  # connections closed (by either side)
        self.requests: list[Received] = []
        self.sent = 0  # bytes written, all connections
        self.unsolicited = 0  # WhenIdle steps written
        self.skipped = 0  # WhenIdle steps not written (the next request had arrived)
        self._peers: set[_Peer] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HostileUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Peer(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for peer in list(self._peers):
            if peer.transport is not None:
                peer.transport.abort()
            if peer.task is not None:
                peer.task.cancel()
        tasks = [peer.task for peer in self._peers if peer.task is not None]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
