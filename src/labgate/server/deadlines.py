"""The one timer of a client connection, and the two deadlines it enforces.

- Idle: a connection that has been waiting for its next request for ``keepalive_timeout`` s closes.
  Bytes that begin no request (blank lines between requests) do not count as activity.
- Read: a request whose first byte was parsed must be complete, head and body, within
  ``request_read_timeout`` s, however its bytes trickle in (slowloris): else 408. The clock stops while
  the server does not read (pipelined requests queued behind a long answer) and restarts when it does.

Nothing here runs per read, and in the common case nothing per request but one clock reading: the
timer is armed when the connection goes idle and re-armed lazily when it fires (then it asks the
connection what state it is in). It is always armed at most ``request_read_timeout`` ahead, so a
request beginning while it is pending is checked in time without touching it. (So the hot callers
store ``idle_since`` / ``read_since`` from ``clock()`` themselves and call :meth:`idle` /
:meth:`reading` only when ``handle`` is None: no call per request.)
"""

from __future__ import annotations

import asyncio
from typing import Protocol

IDLE, READING, BUSY = range(3)  # BUSY: answering, reading paused, or closing (nothing to enforce here)


class Timed(Protocol):
    """What the connection tells the timer and does when a deadline passes."""

    def deadline_state(self) -> int: ...
    def read_timed_out(self) -> None: ...
    def idle_timed_out(self) -> None: ...


class Deadlines:
    """One connection's timer: see the module docstring."""

    __slots__ = ("_keepalive", "_loop", "_owner", "_read_timeout", "clock", "handle", "idle_since", "read_since")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: Timed, *, keepalive: float,
                 read_timeout: float) -> None:
        self._loop = loop
        self._owner = owner
        self._keepalive = keepalive
        self._read_timeout = read_timeout
        self.handle: asyncio.TimerHandle | None = None  # the armed timer (None: not armed)
        self.clock = loop.time
        self.idle_since = self.read_since = loop.time()

    def idle(self) -> None:
        """The connection waits for its next request from now on."""
        self.idle_since = self._loop.time()
        if self.handle is None:
            self._arm(min(self._keepalive, self._read_timeout))

    def reading(self) -> None:
        """A request began, or reading resumed in the middle of one: it is due within the read timeout."""
        self.read_since = self._loop.time()
        if self.handle is None:
            self._arm(self._read_timeout)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _arm(self, delay: float) -> None:
        self.handle = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self.handle = None
        owner = self._owner
        state = owner.deadline_state()
        now = self._loop.time()
        if state == READING:
            left = self.read_since + self._read_timeout - now
            if left <= 0:
                owner.read_timed_out()
                return
            self._arm(left)
        elif state == IDLE:
            left = self.idle_since + self._keepalive - now
            if left <= 0:
                owner.idle_timed_out()
                return
            self._arm(min(left, self._read_timeout))
        # BUSY: idle() or reading() arms the timer again when there is something to enforce
