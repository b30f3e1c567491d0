"""The circuit: consecutive failures open it for a cooldown; a success closes it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from labgate.routing import circuit as circuit_module
from labgate.routing.circuit import Circuit, Health

NOW = 1000.0


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(circuit_module, "time", SimpleNamespace(monotonic=lambda: NOW))


def test_failures_below_the_threshold_keep_it_closed() -> None:
    circuit, health = Circuit(failure_threshold=3, cooldown_s=30), Health()
    circuit.record_failure(health, "connection refused")
    circuit.record_failure(health, "timed out")
    assert health == Health(failures=2, open_until=0.0, last_error="timed out")
    assert circuit.available(health, NOW) is True


def test_reaching_the_threshold_opens_it_for_the_cooldown() -> None:
    circuit, health = Circuit(failure_threshold=3, cooldown_s=30), Health()
    for _ in range(3):
        circuit.record_failure(health, "502 from upstream")
    assert health == Health(failures=3, open_until=NOW + 30, last_error="502 from upstream")
    assert (circuit.available(health, NOW), circuit.available(health, NOW + 29.9)) == (False, False)


def test_after_the_cooldown_it_is_half_open_and_one_failure_reopens_it() -> None:
    circuit, health = Circuit(failure_threshold=2, cooldown_s=10), Health(failures=2, open_until=NOW - 0.1)
    assert circuit.available(health, NOW) is True  # half-open: a trial request may go through
    circuit.record_failure(health, "still down")
    assert health == Health(failures=3, open_until=NOW + 10, last_error="still down")
    assert circuit.available(health, NOW + 5) is False


def test_a_success_closes_it_and_resets_the_count() -> None:
    circuit, health = Circuit(failure_threshold=2, cooldown_s=10), Health(failures=2, open_until=NOW - 0.1)
    circuit.record_success(health)
    assert health == Health(failures=0, open_until=0.0, last_error=None)
    circuit.record_failure(health, "blip")
    assert (health.failures, circuit.available(health, NOW)) == (1, True)  # counting starts again


def test_a_success_between_failures_keeps_it_closed() -> None:
    circuit, health = Circuit(failure_threshold=2, cooldown_s=10), Health()
    circuit.record_failure(health, "a")
    circuit.record_success(health)
    circuit.record_failure(health, "b")
    assert (health.failures, health.open_until) == (1, 0.0)


def test_threshold_of_one_opens_on_the_first_failure() -> None:
    circuit, health = Circuit(failure_threshold=1, cooldown_s=5), Health()
    circuit.record_failure(health, "x")
    assert (health.open_until, circuit.available(health, NOW + 4.9), circuit.available(health, NOW + 5)) == (
        NOW + 5, False, True)


def test_planning_never_uses_up_the_half_open_probe_only_an_attempt_claims_it() -> None:
    """Issue 17 item 7: a plan that succeeds on an earlier candidate must not spend the probe."""
    circuit, health = Circuit(failure_threshold=2, cooldown_s=10), Health(failures=2, open_until=NOW - 0.1)
    assert [circuit.available(health, NOW) for _ in range(3)] == [True, True, True]
    assert health.open_until == NOW - 0.1  # still half-open: nothing was probed
    assert (circuit.claim(health, NOW), circuit.claim(health, NOW)) == (True, False)  # one probe at a time
    assert (health.open_until, circuit.available(health, NOW + 1)) == (NOW + 10, False)


def test_a_closed_circuit_is_always_claimed() -> None:
    circuit, health = Circuit(failure_threshold=2, cooldown_s=10), Health(failures=1)
    assert [circuit.claim(health, NOW) for _ in range(3)] == [True, True, True]
    assert health == Health(failures=1)
