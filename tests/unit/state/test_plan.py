"""Compiled charge plans (state/plan.py): taking and settling a plan's in-process cells decides and counts
exactly what taking and settling its charges by key does (state/counters.py ``decide``, ``settle_now``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.cost import Prices
from labgate.errors import BudgetExceededError, RateLimitedError
from labgate.keys import VirtualKey
from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.runtime import Runtime
from labgate.state.counters import PRUNE_EVERY, MemoryCounters
from labgate.state.limits import Limiter
from labgate.testing.gateway import config_from

WALL = 1_800_000_000.0  # a fixed wall clock (budget windows) for both limiters
KEYS = (None, VirtualKey(id="key_a", name="a", hint="aaaa", rpm=4, tpm=900, budget_usd=0.02, budget_period="day"),
        VirtualKey(id="key_b", name="b", hint="bbbb", project="lab", tpm=500, budget_usd=0.5, budget_period="total"))


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def _config() -> Any:
    return config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                              "models": [{"name": "paid", "pricing": {"input_per_1m": 20, "output_per_1m": 40}},
                                         "free"]}},
                       gateway={"rate_limits": {"rpm": 9, "tpm": 2000, "models": {"pa*": {"rpm": 6, "tpm": 1500}}},
                                "budgets": {"limits": [{"scope": "model", "name": "paid", "limit_usd": 0.05,
                                                        "period": "month"},
                                                       {"scope": "project", "name": "lab", "limit_usd": 0.04,
                                                        "period": "week"},
                                                       {"scope": "global", "limit_usd": 0.08, "period": "day"}]}})


def _pair() -> tuple[Limiter, Limiter, Runtime, Clock]:
    """A limiter on plan cells and one that takes and settles charges by key, on one clock."""
    config, clock = _config(), Clock()
    prices = Prices.from_config(config)
    cells, by_key = Limiter(config, MemoryCounters(clock=clock), prices), Limiter(config, MemoryCounters(clock=clock),
                                                                                  prices)
    by_key._cells = by_key.planner.cells = None  # the general path: charges, decide, settle_now
    return cells, by_key, Runtime.build(config), clock


def _outcome(limiter: Limiter, rt: Runtime, record: RequestRecord) -> str:
    try:
        return limiter.reserve_now(record, rt.table.resolve(record.model or ""), rt.table).name
    except (RateLimitedError, BudgetExceededError) as exc:
        return f"{type(exc).__name__}: {exc.message} ({exc.retry_after})"


def _cells(limiter: Limiter) -> dict[str, tuple[float, float]]:
    """Counters with something in them (a plan creates its cells empty before a first take)."""
    values = limiter.counters._values  # type: ignore[attr-defined]
    return {k: (v[0], round(v[1], 6)) for k, v in values.items() if v[0] != 0.0}


steps = st.lists(st.tuples(st.sampled_from(("paid", "free")), st.integers(0, 2), st.integers(0, 600),
                           st.integers(0, 400), st.integers(0, 700), st.floats(0, 20), st.booleans()),
                 min_size=1, max_size=60)


@settings(max_examples=80, deadline=None)
@given(steps=steps)
def test_plan_cells_decide_and_count_as_charges_by_key(steps: list[tuple[str, int, int, int, int, float, bool]]
                                                       ) -> None:
    cells, by_key, rt, clock = _pair()
    held: list[tuple[RequestRecord, RequestRecord]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time", lambda: WALL + clock.now)
        for model, who, body, max_tokens, used, dt, finish_now in steps:
            clock.now += dt
            pair = []
            for limiter in (cells, by_key):
                record = RequestRecord("r", "chat")
                record.model, record.body, record.api_key = model, b"x" * body, KEYS[who]
                record.payload = {"model": model, "max_tokens": max_tokens}
                assert limiter.plan(record)
                pair.append((record, _outcome(limiter, rt, record)))
            (a, got), (b, expected) = pair
            assert got == expected
            assert type(b.reservation) is not tuple  # charges (a Reservation), not a Taken from cells
            held.append((a, b))
            if finish_now or len(held) > 3:
                for x, y in held:
                    for record in (x, y):
                        record.usage, record.cost = Usage(used, used // 3), used * 3e-5
                        if record.reservation is not None:
                            (cells if record is x else by_key).settle(record)
                held.clear()
            assert _cells(cells) == _cells(by_key)


def test_a_prune_drops_the_plans_and_their_cells_stay_exact() -> None:
    cells, _, rt, clock = _pair()
    record = RequestRecord("r", "chat")
    record.model, record.body, record.payload = "paid", b"x" * 40, {"model": "paid", "max_tokens": 3}
    cells.reserve_now(record, rt.table.resolve("paid"), rt.table)
    assert cells.planner.plans
    clock.now += 3600
    counters = cells.counters
    counters._ops = PRUNE_EVERY  # type: ignore[attr-defined]  # due: the next compile sweeps idle counters
    cells.planner.compile("free", None, rt.table.resolve("free"), time.time())
    assert set(cells.planner.plans) == {"free"}  # the paid plan went with the pruned cells
    again = RequestRecord("r", "chat")
    again.model, again.body, again.payload = "paid", b"x" * 40, {"model": "paid", "max_tokens": 3}
    cells.reserve_now(again, rt.table.resolve("paid"), rt.table)
    plan, _, _ = again.reservation  # a Taken: (plan, tokens, cost)
    assert all(counters._values[c.key] is cell  # type: ignore[attr-defined]
               for c, (cell, _) in zip([c for c in plan.template if c is not None], plan.rpm, strict=True))


def test_plans_of_one_shape_share_their_code_and_keep_their_own_cells() -> None:
    cells, _, rt, _ = _pair()
    route, now = rt.table.resolve("paid"), time.time()
    a, b = (cells.planner.compile("paid", VirtualKey(id=ident, name=ident, hint="xxxx", rpm=5, tpm=900), route, now)
            for ident in ("key_x", "key_y"))
    assert a.take.__code__ is b.take.__code__ and a.settle.__code__ is b.settle.__code__  # type: ignore[union-attr]
    assert a.tpm[0][0] is b.tpm[0][0] and a.tpm[-1][0] is not b.tpm[-1][0]  # the gateway's cell; each key's own
    assert a.take(10, 0.001)  # type: ignore[misc]
    assert a.tpm[-1][0][0] > 0 and b.tpm[-1][0] == [0.0, 0.0] and b.tpm[0][0][0] > 0
