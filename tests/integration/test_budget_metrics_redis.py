"""Budget gauges on ``/metrics`` with Redis-backed budgets: two replicas on one Redis both report the spend
they share (a virtual key's budget included); with Redis gone a scrape still answers 200, without the spend
series, and counts the failed read.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); skips with the reason when Redis cannot be reached.
The outage is a port nothing listens on (no shared server is stopped).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from
from labgate.testing.prometheus import parse_metrics

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
MASTER = "sk-budget-metrics-redis-0123456789"
ENV = "LABGATE_BUDGET_METRICS_REDIS_MASTER"
GLOBAL = '{budget="global",scope="global",period="day"}'
COST = 4 * 2000 / 1e6  # 4 completion tokens at $2,000 per 1M (input free)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(sim: Simulator, url: str, namespace: str, tmp: Path) -> object:
    return config_from(
        {"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"],
                 "pricing": {"input_per_1m": 0, "output_per_1m": 2000}}},
        gateway={"auth": {"master_key_env": ENV}, "logging": {"requests": False},
                 "store": {"url": str(tmp / "history.db"), "capture": "metadata"},
                 "rate_limits": {"url": url, "namespace": namespace},
                 "budgets": {"limits": [{"scope": "global", "limit_usd": 100, "period": "day"}]}})


async def _scrape(http: aiohttp.ClientSession, running: RunningGateway) -> dict[str, float]:
    async with http.get(running.url + "/metrics") as r:
        assert r.status == 200
        text = (await r.read()).decode()
    return {k: v for family in parse_metrics(text).values() for k, v in family.samples.items()}


async def _chat(http: aiohttp.ClientSession, running: RunningGateway, secret: str) -> None:
    body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "spend"}]}
    async with http.post(running.url + "/v1/chat/completions", json=body,
                         headers={"authorization": f"Bearer {secret}"}) as r:
        assert r.status == 200, await r.read()
        await r.read()


async def test_two_replicas_report_the_spend_they_share(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv(ENV, MASTER)
    namespace = "budget-metrics-" + uuid.uuid4().hex[:8]
    async with Simulator(Behaviour(completion_tokens=4), models=["m"]) as sim, aiohttp.ClientSession() as http:
        config = _config(sim, redis_url, namespace, tmp_path)
        a = await start_gateway(config, host="127.0.0.1", port=0)  # type: ignore[arg-type]
        b = await start_gateway(config, host="127.0.0.1", port=0)  # type: ignore[arg-type]
        try:
            async with http.post(a.url + "/admin/keys", headers={"authorization": f"Bearer {MASTER}"},
                                 json={"name": "metered", "budget_usd": 1.5, "budget_period": "month"}) as r:
                assert r.status == 201, await r.read()
                created = await r.json()
            key_id, secret = created["id"], created["key"]
            key_series = f'{{budget="key:{key_id}",scope="key",period="month"}}'
            deadline = time.monotonic() + 30  # b's key ring refreshes from the shared store every 0.5 s
            while "labgate_budget_limit_usd" + key_series not in await _scrape(http, b):
                assert time.monotonic() < deadline, "replica b never saw the new key"
                await asyncio.sleep(0.1)
            for running in (a, b, a):
                await _chat(http, running, MASTER)
            for running in (a, b):
                await _chat(http, running, secret)
            for running in (a, b):
                await running.gateway.runtime.limiter.drain()  # type: ignore[union-attr]
            seen_b = await _scrape(http, b)
            seen_a = await _scrape(http, a)
        finally:
            await a.stop(grace=1.0)
            await b.stop(grace=1.0)
    for seen in (seen_a, seen_b):
        assert seen["labgate_budget_spend_usd" + GLOBAL] == pytest.approx(5 * COST)  # every replica's requests
        assert seen["labgate_budget_limit_usd" + GLOBAL] == 100.0
        assert seen["labgate_budget_spend_usd" + key_series] == pytest.approx(2 * COST)
        assert seen["labgate_budget_limit_usd" + key_series] == 1.5
        assert seen["labgate_budget_window_end_seconds" + GLOBAL] % 86400 == 0
        assert seen["labgate_budget_read_errors_total"] == 0
    assert len([k for k in seen_a if k.startswith("labgate_budget_limit_usd")]) == 2  # keys without a budget: none


async def test_redis_gone_leaves_the_spend_out_and_counts_it(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setenv(ENV, MASTER)
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens: connection refused
    async with Simulator(models=["m"]) as sim, aiohttp.ClientSession() as http:
        running = await start_gateway(_config(sim, url, "gone", tmp_path),  # type: ignore[arg-type]
                                      host="127.0.0.1", port=0)
        try:
            started = time.monotonic()
            first = await _scrape(http, running)
            second = await _scrape(http, running)
            took = time.monotonic() - started
        finally:
            await running.stop(grace=1.0)
    for seen in (first, second):
        assert not [k for k in seen if k.startswith("labgate_budget_spend_usd")]
        assert seen["labgate_budget_limit_usd" + GLOBAL] == 100.0
        assert "labgate_requests_in_flight" in seen  # the rest of the scrape is all there
    assert (first["labgate_budget_read_errors_total"], second["labgate_budget_read_errors_total"]) == (1, 2)
    assert took < 2 * 2.0 + 5  # each read bounded by READ_TIMEOUT_S (plus the scrapes themselves)

