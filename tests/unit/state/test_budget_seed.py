"""Budget spend survives restarts: at start each budget's window is seeded from the history's cost (state/seed.py)."""

from __future__ import annotations

import calendar
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.state.seed import window_start
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

MASTER = "sk-budget-seed-test-0123456789"
PRICED = {"input_per_1m": 1_000_000, "output_per_1m": 2_000_000}  # $1 a prompt token, $2 an answer token


def test_window_starts() -> None:
    now = calendar.timegm((2026, 12, 9, 13, 30, 0))  # a Wednesday
    assert window_start("day", now) == calendar.timegm((2026, 12, 9, 0, 0, 0))
    assert window_start("week", now) == calendar.timegm((2026, 12, 7, 0, 0, 0))  # Monday
    assert window_start("month", now) == calendar.timegm((2026, 12, 1, 0, 0, 0))
    assert window_start("total", now) is None


@asynccontextmanager
async def gateway(sim: Simulator, db: Path, providers: dict[str, Any] | None = None, **gateway_yaml: Any
                  ) -> AsyncIterator[tuple[RunningGateway, aiohttp.ClientSession]]:
    providers = providers or {"cloud": {"type": "openai_compatible", "base_url": sim.url + "/v1",
                                        "models": [{"name": "m", "pricing": PRICED}]}}
    config = config_from(providers, gateway={"auth": {"master_key_env": "LABGATE_SEED_TEST_MASTER"},
                                             "store": {"url": str(db), "capture": "metadata"},
                                             "logging": {"requests": False},
                                             "rate_limits": {"default_output_tokens": 10}, **gateway_yaml})
    running = await start_gateway(config, host="127.0.0.1", port=0)
    try:
        async with aiohttp.ClientSession() as http:
            yield running, http
    finally:
        await running.stop(grace=1.0)  # the history is flushed on the way out


async def post(running: RunningGateway, http: aiohttp.ClientSession, path: str, body: Any,
               key: str = MASTER) -> tuple[int, Any, Any]:
    async with http.post(running.url + path, json=body, headers={"authorization": f"Bearer {key}"}) as r:
        return r.status, orjson.loads(await r.read()), r.headers


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def spend_until_refused(running: RunningGateway, http: aiohttp.ClientSession, key: str = MASTER) -> float:
    spent = 0.0
    for _ in range(40):
        status, body, headers = await post(running, http, "/v1/chat/completions", CHAT, key)
        if status != 200:
            assert (status, body["error"]["code"]) == (429, "insufficient_quota")
            return spent
        spent += float(headers["x-labgate-cost"])
    raise AssertionError("the budget never refused")


def spend_counters(running: RunningGateway) -> dict[str, float]:
    limiter = running.gateway.runtime.limiter
    assert limiter is not None
    values = limiter.counters._values  # type: ignore[attr-defined]
    return {k.split(":spend:", 1)[1].rsplit(":", 2)[0]: v for k, (v, _) in values.items() if ":spend:" in k}


@pytest.mark.asyncio
async def test_a_key_budget_still_refuses_after_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_SEED_TEST_MASTER", MASTER)
    db = tmp_path / "h.db"
    async with Simulator(models=["m"]) as sim:
        async with gateway(sim, db) as (running, http):
            status, created, _ = await post(running, http, "/admin/keys",
                                            {"name": "k", "budget_usd": 60, "budget_period": "day"})
            assert status == 201
            key = created["key"]
            spent = await spend_until_refused(running, http, key)
            assert 0 < spent <= 60
        sim.clear()
        async with gateway(sim, db) as (running, http):
            assert spend_counters(running) == {f"key:{created['id']}": pytest.approx(spent)}
            status, body, _ = await post(running, http, "/v1/chat/completions", CHAT, key)
            assert (status, body["error"]["code"]) == (429, "insufficient_quota")
            assert sim.requests == []  # refused before any upstream


@pytest.mark.asyncio
async def test_global_model_and_provider_budgets_are_seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_SEED_TEST_MASTER", MASTER)
    db = tmp_path / "h.db"
    async with Simulator(models=["m"]) as sim:
        providers = {"cloud": {"type": "openai_compatible", "base_url": sim.url + "/v1",
                               "models": [{"name": "m", "pricing": PRICED}],
                               "budget": {"limit_usd": 80, "period": "month"}}}
        budgets = {"limits": [{"scope": "global", "limit_usd": 1000, "period": "week"},
                              {"scope": "model", "name": "m", "limit_usd": 900, "period": "day"}]}
        async with gateway(sim, db, providers, budgets=budgets) as (running, http):
            spent = await spend_until_refused(running, http)  # the provider's $80 runs out first
            before = spend_counters(running)
        assert before == {"global": pytest.approx(spent), "model:m": pytest.approx(spent),
                          "provider:cloud": pytest.approx(spent)}
        sim.clear()
        async with gateway(sim, db, providers, budgets=budgets) as (running, http):
            assert spend_counters(running) == before
            status, body, headers = await post(running, http, "/v1/chat/completions", CHAT)
            assert (status, body["error"]["code"]) == (429, "insufficient_quota") and "retry-after" in headers
            assert sim.requests == []


@pytest.mark.asyncio
async def test_a_budget_added_by_a_reload_starts_from_the_history(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from labgate.config.reload import ConfigSource

    monkeypatch.setenv("LABGATE_SEED_TEST_MASTER", MASTER)
    async with Simulator(models=["m"]) as sim, gateway(sim, tmp_path / "h.db") as (running, http):
        spent = 0.0
        for _ in range(3):
            status, _, headers = await post(running, http, "/v1/chat/completions", CHAT)
            assert status == 200
            spent += float(headers["x-labgate-cost"])
        history = running.gateway.history
        assert history is not None and running.reloader is not None
        await history.flush()
        config = running.gateway.runtime.config
        budgets = {"limits": [{"scope": "model", "name": "m", "limit_usd": spent + 1, "period": "day"}]}
        raw = {"providers": {"providers": {"cloud": {"type": "openai_compatible", "base_url": sim.url + "/v1",
                                                     "models": [{"name": "m", "pricing": PRICED}]}}},
               "gateway": {**config.gateway.model_dump(exclude_unset=True), "budgets": budgets}}
        from labgate.config.load import build_config

        async def load() -> Any:
            return build_config(raw, {}, source="test")

        running.reloader.source = ConfigSource(load=load)
        assert (await running.reloader.reload(trigger="api")).status == "applied"
        assert spend_counters(running) == {"model:m": pytest.approx(spent)}
        status, body, _ = await post(running, http, "/v1/chat/completions", CHAT)  # a $1 budget left: refused
        assert (status, body["error"]["code"]) == (429, "insufficient_quota")
