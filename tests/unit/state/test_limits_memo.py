"""The limiter's compiled charge plans per (model, key) and their budget window keys (state/plan.py)."""

from __future__ import annotations

import calendar
import time

import pytest

from labgate.cost import Prices
from labgate.record import RequestRecord
from labgate.runtime import Runtime
from labgate.state import budgets, plan
from labgate.state.counters import MemoryCounters
from labgate.state.limits import Limiter
from labgate.testing.gateway import config_from


def _setup() -> tuple[Limiter, Runtime]:
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                "models": [{"name": "paid", "pricing": {"output_per_1m": 10}}, "gpt-x"]}},
                         gateway={"rate_limits": {"rpm": 100, "tpm": 5000, "models": {"gpt-*": {"tpm": 9}}},
                                  "budgets": {"limits": [{"scope": "model", "name": "paid", "limit_usd": 1,
                                                          "period": "month"},
                                                         {"scope": "global", "limit_usd": 5, "period": "day"}]}})
    return Limiter(config, MemoryCounters(), Prices.from_config(config)), Runtime.build(config)


def _record(model: str) -> RequestRecord:
    record = RequestRecord("r", "chat")
    record.model, record.payload, record.body = model, {"model": model, "max_tokens": 3}, b"x" * 40
    return record


def test_a_model_s_charges_are_the_same_from_the_memo() -> None:
    limiter, rt = _setup()
    for model, expected in (("paid", ["rpm:global", "tpm:global", "spend:model:paid:month:", "spend:global:day:"]),
                            ("gpt-x", ["rpm:global", "tpm:global", "tpm:model:gpt-*", "spend:global:day:"])):
        first = limiter.charges(_record(model), rt.table.resolve(model))
        again = limiter.charges(_record(model), rt.table.resolve(model))
        assert [c._replace(period_s=0) for c in first.charges] == [c._replace(period_s=0) for c in again.charges]
        assert [c.key[len(limiter.prefix):] for c in first.charges] == \
            [e + (budgets.window(e.split(":")[-2])[0] if e.startswith("spend") else "") for e in expected]
        assert first.tokens == tuple(i for i, c in enumerate(first.charges) if ":tpm:" in c.key)


def test_a_new_budget_window_gets_a_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter, rt = _setup()
    budgets._current.clear()
    end = calendar.timegm((2026, 12, 31, 23, 59, 59))
    monkeypatch.setattr(time, "time", lambda: end)
    before = {c.key.rsplit(":", 1)[1] for c in limiter.charges(_record("paid"), rt.table.resolve("paid")).charges
              if ":spend:" in c.key}
    monkeypatch.setattr(time, "time", lambda: end + 2)
    after = {c.key.rsplit(":", 1)[1] for c in limiter.charges(_record("paid"), rt.table.resolve("paid")).charges
             if ":spend:" in c.key}
    budgets._current.clear()
    assert before == {"m202612", "d20261231"}
    assert after == {"m202701", "d20270101"}


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter, rt = _setup()
    monkeypatch.setattr(plan, "MODEL_MEMO", 3)
    for i in range(10):
        limiter.charges(_record(f"m{i}"), rt.table.resolve("paid"))
    assert sum(len(keys) for keys in limiter.planner.plans.values()) <= 3


@pytest.mark.parametrize(("payload", "expected"), [
    ({"max_tokens": 7}, 7), ({"max_completion_tokens": 9, "max_tokens": 7}, 9), ({"max_tokens": True}, 1024),
    ({"max_tokens": -1}, 1024), ({"max_tokens": 2.5}, 1024), ({"max_tokens": "3"}, 1024), ({}, 1024)])
def test_the_estimate_takes_only_a_token_count(payload: dict[str, object], expected: int) -> None:
    record = _record("paid")
    record.payload = payload
    assert _setup()[0].planner.estimate(record) == (10, expected)


def _keyed(rpm: int | None, tpm: int | None, budget: float | None, project: str | None = None) -> object:
    from labgate.keys import VirtualKey

    return VirtualKey(id="key_1", name="k", hint="abcd", project=project, rpm=rpm, tpm=tpm, budget_usd=budget,
                      budget_period="day")


def test_a_key_s_charges_follow_its_changes() -> None:
    limiter, rt = _setup()
    route = rt.table.resolve("gpt-x")
    record = _record("gpt-x")
    record.api_key = _keyed(5, None, None)  # type: ignore[assignment]
    first = [c.key[len(limiter.prefix):] for c in limiter.charges(record, route).charges]
    assert "rpm:key:key_1" in first and "tpm:key:key_1" not in first
    record.api_key = _keyed(None, 50, 2.0)  # type: ignore[assignment]  # the key was updated: a new object
    held = limiter.charges(record, route)
    after = [c.key[len(limiter.prefix):] for c in held.charges]
    assert "rpm:key:key_1" not in after and "tpm:key:key_1" in after
    assert any(k.startswith("spend:key:key_1:day:") for k in after)
    tpm = next(c for c in held.charges if c.key.endswith("tpm:key:key_1"))
    assert (tpm.limit, tpm.cost) == (50, 13)  # 40 bytes / 4 + 3 answer tokens


def test_the_estimate_cost_matches_the_price_for_plain_and_tiered_rates() -> None:
    from labgate.cost import Rates
    from labgate.providers.base import Usage

    limiter, rt = _setup()
    route = rt.table.resolve("paid")
    rates = limiter.prices.of(*(lambda d: (d.key, d.provider, d.model))(route.groups[0].deployments[0]))
    assert rates is not None
    planner = limiter.planner
    assert planner.cost(planner.rates(route), 120, 30) == pytest.approx(rates.cost(Usage(120, 30)))
    tiered = Rates(1e-6, 2e-6, tier_start=100, tier=Rates(3e-6, 5e-6))
    planner._rates[route.name] = tiered  # a tiered price keeps its Rates: the tier depends on the prompt
    assert planner.cost(planner.rates(route), 120, 30) == pytest.approx(120 * 3e-6 + 30 * 5e-6)
    assert planner.cost(planner.rates(route), 50, 30) == pytest.approx(50 * 1e-6 + 30 * 2e-6)


@pytest.mark.asyncio
async def test_the_in_process_settlement_equals_the_general_one() -> None:
    """settle_now (one pass) leaves the counters and fires the alerts exactly as adjust_now with deltas does."""
    from labgate.providers.base import Usage

    fused, _ = _setup()
    general, rt = _setup()
    general._settle_now = None  # the path other backends take: deltas, then adjust
    fired: dict[str, list[tuple[str, float]]] = {"fused": [], "general": []}
    for name, limiter in (("fused", fused), ("general", general)):
        limiter.counters._clock = lambda: 1000.0  # type: ignore[attr-defined]  # the same instant for both
        limiter.alerts.check = lambda scope, spent, limit, _n=name: fired[_n].append((scope, round(spent, 9)))
        for i, (real_tokens, real_cost) in enumerate([(5, 0.1), (0, 0.0), (40, 0.45), (13, 0.2), (2, 0.0)]):
            record = _record("paid" if i % 2 == 0 else "gpt-x")
            await limiter.reserve(record, rt.table.resolve(record.model or ""), rt.table)
            record.usage = Usage(real_tokens, 0)
            record.cost = real_cost
            limiter.settle(record)
    a, b = fused.counters._values, general.counters._values  # type: ignore[attr-defined]
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key]), key
    assert any(":tpm:" in key for key in a) and any(":spend:" in key for key in a)
    assert fired["fused"] == fired["general"] and fired["fused"]  # the budgets passed their thresholds
