"""The limits a client connection lives under, and the count of open connections they cap.

Every limit is a ``server.*`` key of ``gateway.yaml`` (``ServerConfig``); ``ServerLimits`` carries
them into the server so the connection code reads plain attributes. When a limit bites the server
says so in one warning line per kind of limit at most every ``LOG_EVERY_S`` seconds, with the count
of the events folded into it, so a flood cannot flood the log too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("labgate.server")

LOG_EVERY_S = 10.0  # at most one warning per kind of limit this often
# Refused connections being answered (503, then a short linger) at once; past it a refused one is
# closed at once, so a flood of connections cannot hold descriptors through its refusals.
MAX_REFUSING = 64


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Sizes, times and counts that bound what one client can make the server hold."""

    max_body_bytes: int = 16 * 1024 * 1024  # larger bodies: 413
    max_header_bytes: int = 64 * 1024  # request line + header fields, trailer fields counted too: 431
    keepalive_timeout: float = 75.0  # idle between requests; also how long a client may take nothing we write
    request_read_timeout: float = 60.0  # from a request's first byte to its last (head and body): 408
    max_connections: int = 4096  # open client connections; over it: 503, closed
    max_connections_per_ip: int = 512  # the same per client address


class LimitLog:
    """Warnings about limits that bit, rate-limited per kind."""

    __slots__ = ("_last", "_suppressed")

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless ``kind`` was logged in the last ``LOG_EVERY_S`` s (then count it)."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < LOG_EVERY_S:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        folded = self._suppressed.pop(kind, 0)
        if folded:
            message += " (and %d more since the last such warning)"
            args = (*args, folded)
        log.warning(message, *args)


class Admission:
    """Counts open connections, in all and per client address, against their caps."""

    __slots__ = ("_by_ip", "_limits", "_log", "open", "refusing")

    def __init__(self, limits: ServerLimits, limit_log: LimitLog) -> None:
        self._limits = limits
        self._log = limit_log
        self._by_ip: dict[str | None, int] = {}
        self.open = 0
        self.refusing = 0  # refused connections still being answered (see MAX_REFUSING)

    def admit(self, client: str | None) -> str | None:
        """Count a new connection from ``client``; if a cap is reached, don't, and say which (for the client)."""
        limits = self._limits
        if self.open >= limits.max_connections:
            self._log.warn("max_connections", "refusing a connection from %s: %d connections are open "
                           "(server.max_connections)", client, self.open)
            return (f"The gateway has too many open connections (server.max_connections = "
                    f"{limits.max_connections}); retry later.")
        count = self._by_ip.get(client, 0)
        if count >= limits.max_connections_per_ip:
            self._log.warn("max_connections_per_ip", "refusing a connection from %s: it has %d open "
                           "(server.max_connections_per_ip)", client, count)
            return (f"Too many open connections from your address (server.max_connections_per_ip = "
                    f"{limits.max_connections_per_ip}); retry later.")
        self._by_ip[client] = count + 1
        self.open += 1
        return None

    def release(self, client: str | None) -> None:
        """An admitted connection closed."""
        self.open -= 1
        count = self._by_ip[client] - 1
        if count:
            self._by_ip[client] = count
        else:
            del self._by_ip[client]
