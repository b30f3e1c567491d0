"""The limiter alone: a backend outage in the middle of a budget fallback, refusal messages."""

from __future__ import annotations

from typing import Any

import pytest

from labgate.cost import Prices
from labgate.errors import BudgetExceededError, RateLimitedError
from labgate.record import RequestRecord
from labgate.runtime import Runtime
from labgate.state.base import Charge, StateUnavailableError
from labgate.state.limits import Limiter
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio


class Scripted:
    """Counters that answer from a script: a (refused, wait) pair, or an exception to raise."""

    backend = "scripted"

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.taken: list[tuple[Charge, ...]] = []

    async def take(self, charges: tuple[Charge, ...]) -> tuple[int, float]:
        self.taken.append(charges)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        pass


def setup(counters: Scripted, on_backend_error: str = "open") -> tuple[Limiter, Runtime, RequestRecord]:
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                "models": [{"name": "paid", "pricing": {"output_per_1m": 1e6}}, "free"]}},
                         gateway={"rate_limits": {"rpm": 100, "on_backend_error": on_backend_error},
                                  "budgets": {"limits": [{"scope": "model", "name": "paid", "limit_usd": 1,
                                                          "period": "day"}],
                                              "on_exhausted": "fallback", "fallback_model": "free"}})
    rt = Runtime.build(config)
    record = RequestRecord("r", "chat")
    record.model, record.payload, record.body = "paid", {"model": "paid", "max_tokens": 5}, b"{}"
    return Limiter(config, counters, Prices.from_config(config)), rt, record  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "expected"), [("open", "free"), ("closed", RateLimitedError)])
async def test_an_outage_during_the_fallback_take(mode: str, expected: Any) -> None:
    counters = Scripted((1, 3600.0), StateUnavailableError("down"))  # the budget refuses, then Redis is gone
    limiter, rt, record = setup(counters, mode)
    route = rt.table.resolve("paid")
    if expected is RateLimitedError:
        with pytest.raises(RateLimitedError, match="cannot be checked"):
            await limiter.reserve(record, route, rt.table)
    else:
        assert (await limiter.reserve(record, route, rt.table)).name == expected
        assert record.budget_fallback == "model:paid" and not record.reservation.charges
    assert [c.kind for c in counters.taken[0]] == ["rate", "cap"] and [c.kind for c in counters.taken[1]] == ["rate"]
    await rt.aclose()


async def test_a_spent_budget_names_its_scope_and_period() -> None:
    limiter, rt, record = setup(Scripted((1, 7200.0)))
    limiter.fallback = None
    with pytest.raises(BudgetExceededError, match=r"model:paid: \$1 today") as caught:
        await limiter.reserve(record, rt.table.resolve("paid"), rt.table)
    assert caught.value.retry_after == 7200.0
    await rt.aclose()
