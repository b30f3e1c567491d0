"""The state protocols: what a feature needs from a backend, one small protocol per kind of state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

KEY_PREFIX = "labgate"  # every key labgate writes starts with "labgate:"


class StateUnavailableError(Exception):
    """The backend cannot be used right now (down, timed out, or resting after a failure).

    Backends raise only this, so features fail open without knowing the client library.
    """


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One stored key, for listings (``labgate cache keys``)."""

    key: str
    bytes: int
    ttl_s: float | None  # seconds left; None: no expiry


class EntryStore(Protocol):
    """Opaque values under string keys, each with a time to live: the cache's entries.

    ``get`` and ``put`` are the request path (one round trip each on Redis);
    the rest serves admin commands and may be slow.
    """

    backend: str  # "memory" | "redis"

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def keys(self, pattern: str, *, limit: int) -> list[KeyInfo]:
        """Keys matching a glob (``labgate:ns:*``), at most ``limit``."""
        ...

    async def delete(self, pattern: str) -> int:
        """Delete every key matching the glob; returns how many went."""
        ...

    def status(self) -> dict[str, object]:
        """The backend's health for ``/admin/cache/stats`` (up, failures, last error)."""
        ...

    async def aclose(self) -> None: ...


class Charge(NamedTuple):
    """One counter a request draws on (state/limits.py, state/budgets.py).

    ``kind`` ``rate``: a GCRA rate limit of ``limit`` per ``period_s`` (``cost``: 1 request, or tokens).
    ``kind`` ``cap``: a budget of ``limit`` (USD) for the window in the key; ``period_s`` is how long the
    window has left (0: never ends); ``cost``: the estimated spend reserved.
    """

    key: str
    kind: str  # "rate" | "cap"
    limit: float
    period_s: float
    cost: float


class Counters(Protocol):
    """Rate limits and budget reservations: all of a request's charges taken at once, or none.

    ``take`` is one round trip on Redis (one script call); ``adjust`` settles a charge after the
    call (real tokens or cost minus the estimate; a negative delta gives back).
    """

    backend: str  # "memory" | "redis"

    async def take(self, charges: tuple[Charge, ...]) -> tuple[int, float]:
        """(-1, 0) when every charge fits (and is now taken); else (index of one that does not, seconds to wait)."""
        ...

    async def adjust(self, charges: tuple[Charge, ...], deltas: tuple[float, ...]) -> None: ...

    async def read(self, keys: tuple[str, ...]) -> tuple[float, ...]:
        """Current values (spend so far for caps; for rates the GCRA's theoretical arrival time)."""
        ...

    async def seed(self, values: tuple[tuple[str, float, float], ...]) -> None:
        """(key, value, ttl seconds; 0: forever): set each counter that does not exist yet (state/seed.py)."""
        ...

    def status(self) -> dict[str, object]: ...

    async def aclose(self) -> None: ...
