"""A provider ``budget`` with ``period: total`` never ends: its counter must not expire an hour after the take."""

from __future__ import annotations

import pytest

from labgate.cost import Prices
from labgate.record import RequestRecord
from labgate.runtime import Runtime
from labgate.state.counters import MemoryCounters
from labgate.state.limits import Limiter
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("period", ["total", "day"])
async def test_a_provider_total_budget_outlives_the_hour(period: str) -> None:
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                "models": [{"name": "m", "pricing": {"output_per_1m": 1e6}}],  # $1 an answer token
                                "budget": {"limit_usd": 15, "period": period}}})
    clock = Clock()
    counters = MemoryCounters(clock=clock)
    limiter = Limiter(config, counters, Prices.from_config(config))
    rt = Runtime.build(config)
    dep = rt.table.resolve("m").groups[0].deployments[0]
    record = RequestRecord("r", "chat")
    record.model, record.payload, record.body = "m", {"model": "m", "max_tokens": 10}, b"{}"
    held = await limiter.take_provider(record, dep)
    assert not isinstance(held, Exception)
    (charge,) = held.charges
    assert charge.cost == 10.0  # ten answer tokens reserved at $1 each
    clock.now += 2 * 3600  # two hours on: a day's window is still open, and a total one never closes
    assert counters.value_now(charge.key) == 10.0
    # the second $10 estimate does not fit the $15 left of the budget: refused, whatever the hour
    assert isinstance(await limiter.take_provider(record, dep), Exception)
    if period == "total":
        assert charge.period_s == 0.0
        clock.now += 400 * 86400  # a total budget is never reset by time
        assert counters.value_now(charge.key) == 10.0
    await rt.aclose()
