"""Rate (GCRA) and cap counters, in process: exact limits, all-or-nothing, settlement; budget windows."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.state.base import Charge
from labgate.state.budgets import window
from labgate.state.counters import MemoryCounters


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rpm(limit: int, key: str = "k") -> Charge:
    return Charge(key, "rate", limit, 60.0, 1)


def test_a_rate_admits_exactly_the_limit_then_refills_continuously() -> None:
    clock = Clock()
    c = MemoryCounters(clock=clock)
    assert [c.take_now((rpm(50),))[0] for _ in range(60)].count(-1) == 50
    refused, wait = c.take_now((rpm(50),))
    assert refused == 0 and wait == pytest.approx(60 / 50)
    clock.now += 60 / 50
    assert c.take_now((rpm(50),)) == (-1, 0.0)
    assert c.take_now((rpm(50),))[0] == 0


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(1, 200), steps=st.lists(st.floats(0, 5), min_size=1, max_size=300))
def test_never_more_than_limit_plus_refill_in_any_run(limit: int, steps: list[float]) -> None:
    """However requests arrive, admitted ≤ limit (the burst) + elapsed × limit / period."""
    clock = Clock()
    c = MemoryCounters(clock=clock)
    start, admitted = clock.now, 0
    for step in steps:
        clock.now += step
        admitted += c.take_now((rpm(limit),))[0] == -1
        assert admitted <= limit + (clock.now - start) * limit / 60 + 1e-9


def test_charges_are_all_or_nothing() -> None:
    c = MemoryCounters(clock=Clock())
    assert c.take_now((rpm(1, "a"),))[0] == -1
    # b has room but a does not: b is not consumed
    assert c.take_now((rpm(5, "b"), rpm(1, "a")))[0] == 1
    assert [c.take_now((rpm(5, "b"),))[0] for _ in range(6)].count(-1) == 5


def test_tokens_are_reserved_then_settled() -> None:
    clock = Clock()
    c = MemoryCounters(clock=clock)
    tpm = Charge("t", "rate", 1000, 60.0, 600)
    assert c.take_now((tpm,))[0] == -1
    assert c.take_now((tpm,))[0] == 0  # 600 + 600 > 1000
    c.adjust_now((tpm,), (100 - 600,))  # it used 100 tokens, not 600
    assert c.take_now((tpm,))[0] == -1  # 100 + 600 ≤ 1000


def test_a_cap_reserves_settles_and_releases() -> None:
    c = MemoryCounters(clock=Clock())
    cap = Charge("spend", "cap", 1.0, 3600.0, 0.4)
    assert [c.take_now((cap,))[0] for _ in range(3)] == [-1, -1, 0]  # 0.4 + 0.4 + 0.4 > 1.0
    c.adjust_now((cap,), (-0.4,))  # a failed call gives its reservation back
    c.adjust_now((cap,), (0.1 - 0.4,))  # the other cost 0.1
    assert c.take_now((cap,))[0] == -1  # 0.4 + 0.1 + 0.4 = 0.9
    assert c.take_now((Charge("spend", "cap", 1.0, 3600.0, 0.0),))[0] == -1  # free requests always pass


def test_a_cap_window_expires() -> None:
    clock = Clock()
    c = MemoryCounters(clock=clock)
    cap = Charge("spend", "cap", 1.0, 10.0, 1.0)
    assert c.take_now((cap,))[0] == -1 and c.take_now((cap,))[0] == 0
    clock.now += 11
    assert c.take_now((cap,))[0] == -1


def test_budget_windows_are_utc_periods() -> None:
    t = calendar.timegm((2026, 12, 6, 9, 30, 0))  # a Sunday
    assert window("day", t) == ("d20261206", 14.5 * 3600)
    assert window("week", t) == ("w202649", 14.5 * 3600)  # ISO week 49 ends on Monday 00:00
    assert window("month", t) == ("m202612", (25 * 24 + 14.5) * 3600)
    assert window("total", t) == ("all", 0.0)
    assert window("month", calendar.timegm((2027, 2, 28, 23, 59, 59))) == ("m202702", 1.0)
