"""Shared circuits (routing/circuit.py): what a replica tells the others, and what it adopts from them."""

from __future__ import annotations

import math
import time

from labgate.routing.circuit import Circuit, Health, adopt, recovered


class Told:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def opened(self, health: Health, cooldown_s: float) -> None:
        self.events.append(("opened", health.key))

    def closed(self, health: Health) -> None:
        self.events.append(("closed", health.key))


def test_opening_and_closing_are_told_once_each() -> None:
    told = Told()
    circuit = Circuit(2, 30.0, told)
    health = Health(key="p/m")
    circuit.record_failure(health, "boom")
    assert told.events == []  # below the threshold: nothing to tell
    circuit.record_failure(health, "boom")
    circuit.record_failure(health, "boom")  # already open: told once
    assert told.events == [("opened", "p/m")]
    circuit.record_success(health)
    circuit.record_success(health)
    assert told.events == [("opened", "p/m"), ("closed", "p/m")]
    assert (health.failures, health.open_until) == (0, 0.0)


def test_adopt_opens_until_the_remote_time_and_ignores_older_news() -> None:
    circuit = Circuit(3, 30.0)
    health = Health(key="p/m")
    now = time.time()
    assert adopt(health, circuit, until=now + 10, error="refused (seen by replica b)", at=now)
    assert health.failures == 3 and not circuit.available(health, time.monotonic())
    assert 9 < health.open_until - time.monotonic() <= 10
    assert not adopt(health, circuit, until=now + 20, error="x", at=now)  # the same change again: nothing
    assert not recovered(health, at=now - 1)  # older than what this replica knows
    assert recovered(health, at=now + 1)
    assert circuit.available(health, time.monotonic()) and health.failures == 0
    assert not adopt(health, circuit, until=now - 1, error="x", at=now + 2)  # already over


def test_a_region_taken_down_by_hand_is_left_alone() -> None:
    health = Health(key="p/m", open_until=math.inf)
    assert not adopt(health, Circuit(1, 30.0), until=time.time() + 10, error="x", at=time.time())
    assert not recovered(health, at=time.time())
    assert health.open_until == math.inf
