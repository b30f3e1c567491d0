"""Rate limits, budgets and cost through a running gateway (in-process counters)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from
from labgate.testing.web import serving

pytestmark = pytest.mark.asyncio
MASTER = "sk-limits-test-0123456789"
# $1 per prompt token and $2 per answer token: costs are easy to compute by hand
PRICED = {"input_per_1m": 1_000_000, "output_per_1m": 2_000_000}


@asynccontextmanager
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, price: dict[str, float] = PRICED,
                  **gateway_yaml: Any) -> AsyncIterator[tuple[RunningGateway, aiohttp.ClientSession, Simulator]]:
    monkeypatch.setenv("LABGATE_LIMITS_TEST_MASTER", MASTER)
    async with Simulator(models=["paid", "free"]) as sim, aiohttp.ClientSession() as http:
        providers = {"cloud": {"type": "openai_compatible", "base_url": sim.url + "/v1",
                               "models": [{"name": "paid", "pricing": price}]},
                     "local": {"type": "ollama", "base_url": sim.url, "models": ["free"]}}
        config = config_from(providers, gateway={"auth": {"master_key_env": "LABGATE_LIMITS_TEST_MASTER"},
                                                 "store": {"url": str(tmp_path / "h.db"), "capture": "metadata"},
                                                 "logging": {"requests": False}, **gateway_yaml})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            yield running, http, sim
        finally:
            await running.stop(grace=1.0)


def caller(running: RunningGateway, http: aiohttp.ClientSession) -> Callable[..., Any]:
    async def call(path: str, body: Any, key: str = MASTER) -> tuple[int, Any, Any]:
        async with http.post(running.url + path, json=body, headers={"authorization": f"Bearer {key}"}) as r:
            return r.status, orjson.loads(await r.read()), r.headers
    return call


def chat(model: str = "paid", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def new_key(call: Callable[..., Any], **fields: Any) -> str:
    status, created, _ = await call("/admin/keys", {"name": "k", **fields})
    assert status == 201
    return str(created["key"])


async def test_key_rpm_refuses_before_the_upstream_in_both_dialects(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(tmp_path, monkeypatch) as (running, http, sim):
        call = caller(running, http)
        key = await new_key(call, rpm=3)
        sim.clear()
        assert [(await call("/v1/chat/completions", chat(), key))[0] for _ in range(3)] == [200] * 3
        status, body, headers = await call("/v1/chat/completions", chat(), key)
        assert (status, body["error"]["type"], body["error"]["code"]) == (429, "rate_limit_error",
                                                                         "rate_limit_exceeded")
        assert int(headers["retry-after"]) >= 1 and headers["x-request-id"] == body["request_id"]
        assert "3 requests per minute" in body["error"]["message"]
        status, body, headers = await call("/v1/messages", {**chat(), "max_tokens": 5}, key)
        assert (status, body["type"], body["error"]["type"]) == (429, "error", "rate_limit_error")
        assert "retry-after" in headers
        assert len(sim.requests) == 3  # the refused requests never reached an upstream
        # the master key is not limited by a virtual key's rpm
        assert (await call("/v1/chat/completions", chat()))[0] == 200


async def test_global_and_model_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"rpm": 5, "models": {"pa*": {"rpm": 2}}}
    async with gateway(tmp_path, monkeypatch, rate_limits=limits) as (running, http, _):
        call = caller(running, http)
        assert [(await call("/v1/chat/completions", chat()))[0] for _ in range(3)] == [200, 200, 429]
        # the refused request took nothing from the global limit: 5 - 2 left for other models
        assert [(await call("/v1/chat/completions", chat("free")))[0] for _ in range(4)] == [200, 200, 200, 429]


async def test_tpm_reserves_an_estimate_and_settles_the_real_count(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(tmp_path, monkeypatch, rate_limits={"default_output_tokens": 200}) as (running, http, _):
        call = caller(running, http)
        key = await new_key(call, tpm=300)
        status, body, _ = await call("/v1/chat/completions", chat(), key)
        assert status == 200 and body["usage"]["total_tokens"] < 50
        # the estimate (≈ 220) was settled to the real count: a second request fits
        assert (await call("/v1/chat/completions", chat(), key))[0] == 200
        # one that asks for more tokens than the limit leaves is refused at once
        status, body, _ = await call("/v1/chat/completions", chat(max_tokens=290), key)
        assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")
        assert "tokens per minute" in body["error"]["message"]


async def test_cost_header_and_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(tmp_path, monkeypatch) as (running, http, _):
        call = caller(running, http)
        _, body, headers = await call("/v1/chat/completions", chat())
        usage = body["usage"]
        expected = usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2
        assert float(headers["x-labgate-cost"]) == pytest.approx(expected)
        _, _, headers = await call("/v1/chat/completions", chat("free"))
        assert headers["x-labgate-cost"] == "0"  # a local engine is free unless priced
        assert running.gateway.history is not None
        await running.gateway.history.flush()
        rows = await running.gateway.history.store.fetch("SELECT model, cost FROM requests ORDER BY id")
        assert [(r["model"], r["cost"]) for r in rows] == [("paid", pytest.approx(expected)), ("free", 0.0)]


async def test_a_key_budget_is_reserved_and_reconciled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(tmp_path, monkeypatch, rate_limits={"default_output_tokens": 10}) as (running, http, _):
        call = caller(running, http)
        key = await new_key(call, budget_usd=100, budget_period="day")
        spent, codes = 0.0, []
        for _ in range(20):
            status, body, headers = await call("/v1/chat/completions", chat(), key)
            codes.append(status)
            if status == 200:
                spent += float(headers["x-labgate-cost"])
            else:
                assert (body["error"]["type"], body["error"]["code"]) == ("insufficient_quota",
                                                                          "insufficient_quota")
                assert "retry-after" in headers
        assert 200 in codes and 429 in codes and codes == sorted(codes)  # once spent, refused from then on
        assert spent <= 100
        limiter = running.gateway.runtime.limiter
        assert limiter is not None
        counted = [v for k, (v, _) in limiter.counters._values.items() if ":spend:" in k]  # type: ignore[attr-defined]
        assert counted == [pytest.approx(spent)]  # nothing is left reserved: the store equals the spend


async def test_an_exhausted_budget_falls_back_to_the_local_model(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    budgets = {"limits": [{"scope": "model", "name": "paid", "limit_usd": 1, "period": "month"}],
               "on_exhausted": "fallback", "fallback_model": "free"}
    async with gateway(tmp_path, monkeypatch, budgets=budgets) as (running, http, _):
        call = caller(running, http)
        status, _, headers = await call("/v1/chat/completions", chat())
        assert (status, headers["x-labgate-provider"], headers["x-labgate-budget"]) == (200, "local",
                                                                                       "fallback:model:paid")
        assert headers["x-labgate-cost"] == "0"


async def test_a_stream_settles_its_tokens_and_cost_when_it_ends(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(tmp_path, monkeypatch, rate_limits={"default_output_tokens": 200}) as (running, http, _):
        call = caller(running, http)
        key = await new_key(call, tpm=300, budget_usd=1000)
        for _ in range(3):  # each would reserve ≈ 220 tokens: only settling lets the next one in
            async with http.post(running.url + "/v1/chat/completions", json=chat(stream=True),
                                 headers={"authorization": f"Bearer {key}"}) as r:
                assert r.status == 200 and "x-labgate-cost" not in r.headers  # known only at the end
                assert (await r.read()).endswith(b"data: [DONE]\n\n")
        assert running.gateway.history is not None
        await running.gateway.history.flush()
        rows = await running.gateway.history.store.fetch("SELECT cost FROM requests WHERE stream")
        costs = [r["cost"] for r in rows]
        assert len(costs) == 3 and all(c > 0 for c in costs)
        limiter = running.gateway.runtime.limiter
        assert limiter is not None
        spend = [v for k, (v, _) in limiter.counters._values.items() if ":spend:" in k]  # type: ignore[attr-defined]
        assert spend == [pytest.approx(sum(costs))]


async def test_budget_alerts_log_count_and_post_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp import web

    posted: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serving(app) as url:
        budgets = {"limits": [{"scope": "model", "name": "paid", "limit_usd": 100, "period": "week"}],
                   "alert_thresholds": [0.25, 0.5, 0.8], "alert_webhook": f"{url}/hook"}
        async with gateway(tmp_path, monkeypatch, budgets=budgets, rate_limits={"default_output_tokens": 5}) as (
                running, http, _):
            call = caller(running, http)
            spent = 0.0
            while True:
                status, _, headers = await call("/v1/chat/completions", chat())
                if status != 200:
                    break
                spent += float(headers["x-labgate-cost"])
            limiter = running.gateway.runtime.limiter
            assert limiter is not None
            await limiter.drain()
            crossed = [t for t in (0.25, 0.5, 0.8) if spent >= t * 100]
            assert crossed and sorted(p["threshold"] for p in posted) == sorted(set(p["threshold"] for p in posted))
            assert max(p["threshold"] for p in posted) == max(crossed)  # each crossing reported once, the top one
            assert all(p["budget"] == "model:paid" and p["period"] == "week" for p in posted)
            lines = [r.getMessage() for r in caplog.records if "budget alert" in r.getMessage()]
            assert len(lines) == len(posted) and "model:paid" in lines[0]
            async with http.get(running.url + "/metrics") as r:
                text = await r.text()
            assert f'labgate_budget_alerts_total{{budget="model:paid",threshold="{max(crossed):g}"}} 1' in text


async def test_a_budget_alert_fires_when_the_estimate_was_exact(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: settling skipped the alert check when the reservation's estimate equalled the real cost
    (nothing to adjust), so a budget passed its thresholds in silence (here: output-only prices and a
    ``max_tokens`` the answer uses exactly, so every estimate is the real cost)."""
    budgets = {"limits": [{"scope": "model", "name": "paid", "limit_usd": 100, "period": "week"}]}
    output_only = {"input_per_1m": 0, "output_per_1m": 2_000_000}  # $2 per answer token, prompts free
    async with gateway(tmp_path, monkeypatch, price=output_only, budgets=budgets) as (running, http, _):
        call = caller(running, http)
        # learn what an answer uses (its estimate, $40, fits the budget; the real cost is settled)
        status, body, headers = await call("/v1/chat/completions", chat(max_tokens=20))
        assert status == 200
        used = body["usage"]["completion_tokens"]
        spent, status = float(headers["x-labgate-cost"]), 200
        assert used < 20 and spent == 2 * used
        limiter = running.gateway.runtime.limiter
        assert limiter is not None
        while status == 200 and spent < 50:
            status, _, headers = await call("/v1/chat/completions", chat(max_tokens=used))
            spent += float(headers["x-labgate-cost"])
        await limiter.drain()
        async with http.get(running.url + "/metrics") as r:
            text = await r.text()
        assert 'labgate_budget_alerts_total{budget="model:paid",threshold="0.5"} 1' in text
