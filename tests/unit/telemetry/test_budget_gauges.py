"""Budget gauges on ``/metrics`` (telemetry/budgets.py): limit, spend and window end per budget, read at
scrape time; an unreadable or slow backend leaves the spend out and counts the failure; key budgets bounded."""

from __future__ import annotations

import asyncio
import calendar
import logging

import aiohttp
import pytest

from labgate.cost import Prices
from labgate.keys import VirtualKey
from labgate.server.metrics import exposition
from labgate.server.serve import start_gateway
from labgate.state.base import StateUnavailableError
from labgate.state.counters import MemoryCounters
from labgate.state.limits import Limiter
from labgate.telemetry.budgets import BudgetGauges
from labgate.telemetry.group import merge
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from
from labgate.testing.prometheus import parse_metrics

pytestmark = pytest.mark.asyncio
NOW = calendar.timegm((2026, 12, 6, 12, 0, 0))  # a Sunday noon (UTC)
DAY_END = calendar.timegm((2026, 12, 7, 0, 0, 0))
WEEK_END = DAY_END  # the ISO week ends on Monday 00:00
MONTH_END = calendar.timegm((2027, 1, 1, 0, 0, 0))


class Down(MemoryCounters):
    async def read(self, keys: tuple[str, ...]) -> tuple[float, ...]:
        raise StateUnavailableError("redis://10.0.0.1:6379 refused the connection")


class Stuck(MemoryCounters):
    async def read(self, keys: tuple[str, ...]) -> tuple[float, ...]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class Broken(MemoryCounters):
    async def read(self, keys: tuple[str, ...]) -> tuple[float, ...]:
        raise RuntimeError("a bug in the backend")


def limiter(counters: MemoryCounters) -> Limiter:
    config = config_from(
        {"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "models": ["m"],
               "budget": {"limit_usd": 7, "period": "month"}}},
        gateway={"budgets": {"limits": [{"scope": "global", "limit_usd": 50, "period": "week"},
                                        {"scope": "model", "name": 'we"ird\\name', "limit_usd": 3, "period": "day"},
                                        {"scope": "project", "name": "lab", "limit_usd": 5, "period": "total"}]}})
    return Limiter(config, counters, Prices.from_config(config))


KEYS = [VirtualKey(id="key_b", name="b", hint="bbbb", budget_usd=2.0, budget_period="day"),
        VirtualKey(id="key_a", name="a", hint="aaaa", budget_usd=1.0, budget_period="month"),
        VirtualKey(id="key_n", name="n", hint="nnnn"),  # no budget: no series
        VirtualKey(id="key_r", name="r", hint="rrrr", budget_usd=9.0, revoked_at=1.0)]  # revoked: no series


def samples(text: str) -> dict[str, float]:
    return {k: v for family in parse_metrics(text).values() for k, v in family.samples.items()}


def labels(budget: str, scope: str, period: str) -> str:
    return f'{{budget="{budget}",scope="{scope}",period="{period}"}}'


async def test_every_budget_has_its_limit_spend_and_window_end() -> None:
    counters = MemoryCounters()
    lim = limiter(counters)
    rows, keys = lim.budget_rows(KEYS, NOW)
    spent = {"global": 12.5, "model:we\"ird\\name": 0.25, "key:key_b": 1.75}
    counters._values.update({key: (spent[row["budget"]], 0.0) for row, key in zip(rows, keys, strict=True)
                             if row["budget"] in spent})
    gauges = BudgetGauges()
    got = samples(await gauges.render(lim, KEYS, NOW))
    weird = labels('model:we\\"ird\\\\name', "model", "day")
    assert got == {
        "labgate_budget_limit_usd" + labels("global", "global", "week"): 50.0,
        "labgate_budget_limit_usd" + weird: 3.0,
        "labgate_budget_limit_usd" + labels("project:lab", "project", "total"): 5.0,
        "labgate_budget_limit_usd" + labels("provider:p", "provider", "month"): 7.0,
        "labgate_budget_limit_usd" + labels("key:key_a", "key", "month"): 1.0,
        "labgate_budget_limit_usd" + labels("key:key_b", "key", "day"): 2.0,
        "labgate_budget_spend_usd" + labels("global", "global", "week"): 12.5,
        "labgate_budget_spend_usd" + weird: 0.25,
        "labgate_budget_spend_usd" + labels("project:lab", "project", "total"): 0.0,
        "labgate_budget_spend_usd" + labels("provider:p", "provider", "month"): 0.0,
        "labgate_budget_spend_usd" + labels("key:key_a", "key", "month"): 0.0,
        "labgate_budget_spend_usd" + labels("key:key_b", "key", "day"): 1.75,
        # no window end for period total: it never resets, there is no burn to project
        "labgate_budget_window_end_seconds" + labels("global", "global", "week"): WEEK_END,
        "labgate_budget_window_end_seconds" + weird: DAY_END,
        "labgate_budget_window_end_seconds" + labels("provider:p", "provider", "month"): MONTH_END,
        "labgate_budget_window_end_seconds" + labels("key:key_a", "key", "month"): MONTH_END,
        "labgate_budget_window_end_seconds" + labels("key:key_b", "key", "day"): DAY_END,
        "labgate_budget_series_omitted": 0,
    }
    assert gauges.errors == 0
    assert samples(gauges.counters()) == {"labgate_budget_read_errors_total": 0}


@pytest.mark.parametrize("counters", [Down(), Stuck(), Broken()], ids=["down", "stuck", "broken"])
async def test_an_unreadable_spend_is_left_out_and_counted(counters: MemoryCounters,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    lim = limiter(counters)
    gauges = BudgetGauges(timeout_s=0.05)
    with caplog.at_level(logging.WARNING, "labgate.metrics"):
        first = samples(await asyncio.wait_for(gauges.render(lim, KEYS, NOW), 10))
        second = samples(await asyncio.wait_for(gauges.render(lim, KEYS, NOW), 10))
    for got in (first, second):
        assert not [k for k in got if k.startswith("labgate_budget_spend_usd")]
        assert len([k for k in got if k.startswith("labgate_budget_limit_usd")]) == 6  # limits stay
        assert got["labgate_budget_window_end_seconds" + labels("global", "global", "week")] == WEEK_END
    assert gauges.errors == 2
    assert samples(gauges.counters()) == {"labgate_budget_read_errors_total": 2}
    assert len([r for r in caplog.records if "left out of /metrics" in r.message]) == 1  # once, when it starts


async def test_the_spend_comes_back_when_the_backend_does(caplog: pytest.LogCaptureFixture) -> None:
    counters = Down()
    lim = limiter(counters)
    gauges = BudgetGauges()
    await gauges.render(lim, KEYS, NOW)
    lim.counters = MemoryCounters()
    with caplog.at_level(logging.WARNING, "labgate.metrics"):
        got = samples(await gauges.render(lim, KEYS, NOW))
    assert len([k for k in got if k.startswith("labgate_budget_spend_usd")]) == 6
    assert (gauges.errors, gauges.failing) == (1, False)
    assert any("readable again" in r.message for r in caplog.records)


async def test_key_budgets_are_bounded_lowest_ids_first() -> None:
    keys = [VirtualKey(id=f"key_{i:04d}", name=str(i), hint="xxxx", budget_usd=1.0, budget_period="day")
            for i in range(25, 0, -1)]
    gauges = BudgetGauges(max_keys=10)
    got = samples(await gauges.render(limiter(MemoryCounters()), keys, NOW))
    series = sorted(k for k in got if k.startswith("labgate_budget_limit_usd") and 'scope="key"' in k)
    assert series == ["labgate_budget_limit_usd" + labels(f"key:key_{i:04d}", "key", "day") for i in range(1, 11)]
    assert got["labgate_budget_series_omitted"] == 15


async def test_a_gateway_exports_the_spend_it_settled_and_not_through_the_sibling_text() -> None:
    """A real request through a priced model: the spend gauge is its cost. The text a --workers sibling
    sends (``exposition``) has no budget gauges, so merging N siblings cannot multiply them."""
    async with Simulator(Behaviour(completion_tokens=5), models=["m"]) as sim:
        config = config_from(
            {"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1",
                     "models": [{"name": "m", "pricing": {"input_per_1m": 0, "output_per_1m": 1000}}]}},
            gateway={"logging": {"requests": False}, "store": {"capture": "none"},
                     "budgets": {"limits": [{"scope": "model", "name": "m", "limit_usd": 1, "period": "day"}]}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(3):
                    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
                    async with http.post(running.url + "/v1/chat/completions", json=body) as r:
                        assert r.status == 200
                        await r.read()
                await running.gateway.runtime.limiter.drain()  # type: ignore[union-attr]
                async with http.get(running.url + "/metrics") as r:
                    assert r.status == 200
                    scraped = samples((await r.read()).decode())
            gateway = running.gateway
            assert gateway.metrics is not None
            sibling = exposition(gateway, gateway.metrics)
        finally:
            await running.stop(grace=1.0)
    series = labels("model:m", "model", "day")
    assert scraped["labgate_budget_spend_usd" + series] == pytest.approx(3 * 5 * 1000 / 1e6)
    assert scraped["labgate_budget_limit_usd" + series] == 1.0
    assert scraped["labgate_budget_read_errors_total"] == 0
    assert "labgate_budget_spend_usd" not in sibling and "labgate_budget_limit_usd" not in sibling
    assert "labgate_budget_read_errors_total 0" in sibling  # a per-process counter: summed like the others
    # what a scrape of 3 workers would answer: the error counters add up, the gauges are appended once
    merged = samples(merge([sibling, sibling.replace("errors_total 0", "errors_total 2"), sibling]))
    assert merged["labgate_budget_read_errors_total"] == 2


async def test_no_budgets_no_budget_series() -> None:
    async with Simulator(models=["m"]) as sim:
        config = config_from({"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}},
                             gateway={"logging": {"requests": False}, "store": {"capture": "none"},
                                      "rate_limits": {"rpm": 1000}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            async with aiohttp.ClientSession() as http, http.get(running.url + "/metrics") as r:
                text = (await r.read()).decode()
        finally:
            await running.stop(grace=1.0)
    assert "labgate_budget" not in text
