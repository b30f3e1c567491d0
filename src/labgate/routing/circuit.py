"""Per-deployment health: consecutive failures open a circuit for a cooldown.

Failures are counted in each process. With ``state.url`` set, a circuit that
opens is also told to every replica (``server/replicas.py`` writes it to
Redis and reads the others' within ``state.sync_interval_s``): a replica
adopts an open circuit it did not see fail (:func:`adopt`), and closes it
again when the replica that probed it saw it recover (:func:`recovered`).
When Redis is down each process keeps deciding from its own failures.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class Health:
    """Mutable health of one deployment; lives as long as its Runtime."""

    failures: int = 0
    open_until: float = 0.0
    inflight: int = 0
    last_error: str | None = None
    # bookkeeping for shared circuits, not part of a health's value: the deployment's key (its name among
    # replicas) and the wall-clock time its circuit last opened or closed (here or on another replica)
    key: str = field(default="", compare=False)
    changed_at: float = field(default=0.0, compare=False)


class CircuitShare(Protocol):
    """Where a circuit that opens or closes is told to the other replicas (``server/replicas.py``)."""

    def opened(self, health: Health, cooldown_s: float) -> None: ...

    def closed(self, health: Health) -> None: ...


@dataclass(frozen=True, slots=True)
class Circuit:
    """Decides from :class:`Health` whether a deployment may be tried now."""

    failure_threshold: int
    cooldown_s: float
    share: CircuitShare | None = None  # None: this process's circuits are its own

    def available(self, health: Health, now: float) -> bool:
        """May this deployment be planned now? (Read only: planning never uses up the half-open probe.)"""
        return health.open_until <= now

    def claim(self, health: Health, now: float) -> bool:
        """Just before an attempt: may it go? After a cooldown, one probe is let through.

        The probe is claimed here, by the request that really sends it, not when a plan lists the
        deployment: a plan that succeeds on an earlier candidate never reaches it and used to keep
        the circuit open for another cooldown without having probed anything.
        """
        if health.failures < self.failure_threshold:
            return True
        if health.open_until > now:
            return False  # another request is probing; this one moves on
        # half-open: this request is the probe; others wait until it succeeds or another cooldown ends
        health.open_until = now + self.cooldown_s
        return True

    def record_success(self, health: Health) -> None:
        if health.failures:
            was_open = health.failures >= self.failure_threshold
            health.failures = 0
            health.open_until = 0.0
            if was_open and self.share is not None:
                health.changed_at = time.time()
                self.share.closed(health)

    def record_failure(self, health: Health, error: str) -> None:
        health.failures += 1
        health.last_error = error
        if health.failures >= self.failure_threshold:
            health.open_until = time.monotonic() + self.cooldown_s
            if health.failures == self.failure_threshold and self.share is not None:
                health.changed_at = time.time()
                self.share.opened(health, self.cooldown_s)


def adopt(health: Health, circuit: Circuit, *, until: float, error: str, at: float) -> bool:
    """Open ``health``'s circuit until the wall-clock time ``until``, as another replica saw it fail.

    Ignored when this process already knows of a later change, or when the region is down (``inf``).
    Returns whether anything changed.
    """
    if at <= health.changed_at or health.open_until == math.inf:
        return False
    left = until - time.time()
    if left <= 0:
        return False
    health.changed_at = at
    health.failures = max(health.failures, circuit.failure_threshold)
    health.open_until = max(health.open_until, time.monotonic() + left)
    health.last_error = error
    return True


def recovered(health: Health, *, at: float) -> bool:
    """Close ``health``'s circuit: another replica's probe succeeded at wall-clock time ``at``."""
    if at <= health.changed_at or health.open_until == math.inf:
        return False
    health.changed_at = at
    health.failures = 0
    health.open_until = 0.0
    return True
