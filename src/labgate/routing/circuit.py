"""Per-deployment health: consecutive failures open a circuit for a cooldown.

In-memory and per process (a Redis backend comes with distributed state).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class Health:
    """Mutable health of one deployment; lives as long as its Runtime."""

    failures: int = 0
    open_until: float = 0.0
    inflight: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Circuit:
    """Decides from :class:`Health` whether a deployment may be tried now."""

    failure_threshold: int
    cooldown_s: float

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
        health.failures = 0
        health.open_until = 0.0

    def record_failure(self, health: Health, error: str) -> None:
        health.failures += 1
        health.last_error = error
        if health.failures >= self.failure_threshold:
            health.open_until = time.monotonic() + self.cooldown_s
