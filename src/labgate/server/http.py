"""A lean HTTP/1.1 server on asyncio protocols and httptools.

The server is split along its concepts:

- ``http.py`` (this module): ``HttpServer``: listening sockets, the count of open connections
  against their caps, in-flight requests, graceful shutdown;
- ``connection.py``: one client connection: transport events, answering in order, keep-alive;
- ``framing.py``: the rules llhttp's callbacks (methods of ``Connection``) apply to make ``Request``
  objects: the size limits and the HTTP/1.1 framing rules;
- ``deadlines.py``: the connection's one timer: idle timeout, whole-request read deadline;
- ``respond.py``: response heads and how a body goes on the wire;
- ``limits.py``: the limits (``server.*`` config) and the rate-limited warnings when they bite;
- ``messages.py``: ``Request``, ``Response``, ``Handler`` (re-exported here).

Errors the client sees come from the ``error_response`` callable (the JSON envelopes); the server
decides when: 400 malformed HTTP (or a missing/duplicate Host on HTTP/1.1), 408 a request not read
within ``request_read_timeout``, 413 a body over the limit, 431 a header section over it, 501 a
transfer coding we do not implement, 505 an HTTP version other than 1.0/1.1, 503 a connection over
``max_connections`` or ``max_connections_per_ip`` (answered at once, then closed), 500 a handler
that raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket

from labgate.server.connection import Connection
from labgate.server.limits import Admission, LimitLog, ServerLimits
from labgate.server.messages import ErrorResponder, Handler, Request, Response
from labgate.server.respond import HeadRenderer

__all__ = ["ErrorResponder", "Handler", "HttpServer", "Request", "Response", "ServerLimits"]

log = logging.getLogger("labgate.server")

_CANCEL_WAIT_S = 1.0  # at shutdown, how long cancelled handlers get to run their cleanup
_BACKLOG = 2048
_FDS_PER_CONNECTION = 2  # a proxied request holds its client's socket and an upstream's


class HttpServer:
    """Serves ``handler`` over HTTP/1.1 on one or more listening sockets."""

    __slots__ = ("_servers", "admission", "closing", "connections", "error_response", "handler", "heads",
                 "inflight", "limit_log", "limits")

    def __init__(self, handler: Handler, *, error_response: ErrorResponder, limits: ServerLimits | None = None,
                 max_body_bytes: int | None = None, keepalive_timeout: float | None = None,
                 max_header_bytes: int | None = None) -> None:
        # the single-limit keywords predate ServerLimits; kept for callers that set only these
        limits = limits or ServerLimits()
        if max_body_bytes is not None:
            limits = dataclasses.replace(limits, max_body_bytes=max_body_bytes)
        if max_header_bytes is not None:
            limits = dataclasses.replace(limits, max_header_bytes=max_header_bytes)
        if keepalive_timeout is not None:
            limits = dataclasses.replace(limits, keepalive_timeout=keepalive_timeout)
        self.handler = handler
        self.error_response = error_response
        self.limits = limits
        self.limit_log = LimitLog()
        self.admission = Admission(limits, self.limit_log)
        self.heads = HeadRenderer()
        self._servers: list[asyncio.AbstractServer] = []
        self.connections: set[Connection] = set()
        self.inflight = 0  # requests whose handler or response stream is running right now
        self.closing = False

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None,
                    reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (or on ``sock``, already bound); returns the bound port."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            server = await loop.create_server(lambda: Connection(self), sock=sock, backlog=_BACKLOG)
        else:
            server = await loop.create_server(lambda: Connection(self), host, port,
                                              reuse_port=reuse_port, backlog=_BACKLOG)
        self._servers.append(server)
        _warn_if_fds_short(self.limits.max_connections)
        return server.sockets[0].getsockname()[1]

    def busy_tasks(self) -> set[asyncio.Task[None]]:
        """The tasks answering requests right now, streams included (a reload waits for them to end
        before it closes the old runtime's upstream connections)."""
        return {conn.task for conn in self.connections if conn.task is not None}

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, give in-flight requests ``grace`` s, then cancel them."""
        self.closing = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        busy = self.busy_tasks()
        if busy:
            _, busy = await asyncio.wait(busy, timeout=grace)
        for conn in list(self.connections):
            conn.abort()
        if busy:
            await asyncio.wait(busy, timeout=_CANCEL_WAIT_S)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), _CANCEL_WAIT_S)
        self._servers.clear()


def _warn_if_fds_short(max_connections: int) -> None:
    """Past the process's file-descriptor limit, accept() fails and clients see a bare close: say so."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections * _FDS_PER_CONNECTION > soft:
        log.warning("server.max_connections is %d but the file descriptor limit (ulimit -n) is %d: "
                    "raise the limit or lower max_connections to about %d", max_connections, soft,
                    soft // _FDS_PER_CONNECTION)
