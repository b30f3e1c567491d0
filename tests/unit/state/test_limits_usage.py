"""``Limiter.usage``: what ``GET /admin/budgets`` lists (each budget, its window, what it has used)."""

from __future__ import annotations

import calendar
import time

import pytest

from labgate.cost import Prices
from labgate.keys import VirtualKey
from labgate.record import RequestRecord
from labgate.runtime import Runtime
from labgate.state.base import StateUnavailableError
from labgate.state.counters import MemoryCounters
from labgate.state.limits import Limiter
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio
NOW = calendar.timegm((2026, 12, 6, 12, 0, 0))  # a Sunday: the ISO week ends in 12 h


class Down(MemoryCounters):
    async def read(self, keys: tuple[str, ...]) -> tuple[float, ...]:
        raise StateUnavailableError("redis://10.0.0.1:6379 refused the connection")


def build(counters: MemoryCounters) -> tuple[Limiter, Runtime]:
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                "models": [{"name": "paid", "pricing": {"output_per_1m": 1e6}}]}},
                         gateway={"budgets": {"limits": [{"scope": "global", "limit_usd": 50, "period": "week"},
                                                         {"scope": "project", "name": "lab", "limit_usd": 5,
                                                          "period": "total"}]}})
    return Limiter(config, counters, Prices.from_config(config)), Runtime.build(config)


KEYS = [VirtualKey(id="key_a", name="a", hint="aaaa", budget_usd=2.0, budget_period="day", project="lab"),
        VirtualKey(id="key_b", name="b", hint="bbbb"),  # no budget: not listed
        VirtualKey(id="key_c", name="c", hint="cccc", budget_usd=9.0, revoked_at=1.0)]  # revoked: not listed


async def test_every_budget_with_its_window_and_use() -> None:
    counters = MemoryCounters()
    limiter, rt = build(counters)
    rows, error = await limiter.usage(KEYS, NOW)
    assert error is None
    assert rows == [
        {"budget": "global", "scope": "global", "name": None, "limit_usd": 50.0, "period": "week",
         "window": "w202649", "resets_in_s": 43200.0, "used_usd": 0.0, "remaining_usd": 50.0},
        {"budget": "project:lab", "scope": "project", "name": "lab", "limit_usd": 5.0, "period": "total",
         "window": "all", "resets_in_s": None, "used_usd": 0.0, "remaining_usd": 5.0},
        {"budget": "key:key_a", "scope": "key", "name": "key_a", "key_name": "a", "limit_usd": 2.0, "period": "day",
         "window": "d20261206", "resets_in_s": 43200.0, "used_usd": 0.0, "remaining_usd": 2.0}]
    # a request's reservation lands on the same counters the listing reads
    record = RequestRecord("r", "chat")
    record.model, record.payload, record.body = "paid", {"model": "paid", "max_tokens": 1}, b"{}"
    record.api_key = KEYS[0]
    held = limiter.charges(record, rt.table.resolve("paid"))
    caps = tuple(held.charges[i] for i in held.caps)
    assert [c.key.split(":spend:", 1)[1].rsplit(":", 1)[0] for c in caps] == ["key:key_a:day", "project:lab:total",
                                                                              "global:week"]
    assert counters.take_now(caps)[0] == -1  # admitted: $1 (1 output token at $1e6 per 1M) on each
    rows, _ = await limiter.usage(KEYS, time.time())  # the charges were named after the current windows
    used = {r["budget"]: r["used_usd"] for r in rows}
    assert used == {"global": 1.0, "project:lab": 1.0, "key:key_a": 1.0}
    assert {r["budget"]: r["remaining_usd"] for r in rows} == {"global": 49.0, "project:lab": 4.0, "key:key_a": 1.0}
    await rt.aclose()


async def test_an_unreadable_backend_lists_the_budgets_without_their_use() -> None:
    limiter, rt = build(Down())
    rows, error = await limiter.usage(KEYS, NOW)
    assert error == "The limits backend cannot be read now: redis://10.0.0.1:6379 refused the connection"
    assert [(r["budget"], r["used_usd"], r["remaining_usd"]) for r in rows] == [
        ("global", None, None), ("project:lab", None, None), ("key:key_a", None, None)]
    await rt.aclose()
