"""Provider limits on the real Redis: two replicas share a provider's rpm and budget (one script call each).

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); every test uses its own namespace.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
PRICED = {"input_per_1m": 1_000_000, "output_per_1m": 2_000_000}



@asynccontextmanager
async def replicas(url: str, tmp_path: Path, first: dict[str, Any], second: bool, n: int = 2
                   ) -> AsyncIterator[tuple[list[RunningGateway], aiohttp.ClientSession, Simulator, Simulator]]:
    namespace = "t" + uuid.uuid4().hex[:10]
    async with Simulator(models=["m"]) as a, Simulator(models=["m"]) as b, AsyncExitStack() as stack:
        providers = {"first": {"type": "openai_compatible", "base_url": a.url + "/v1", "priority": 1,
                               "models": [{"name": "m", "pricing": PRICED}], **first}}
        if second:
            providers["second"] = {"type": "openai_compatible", "base_url": b.url + "/v1", "priority": 2,
                                   "models": ["m"]}
        running = []
        for i in range(n):
            config = config_from(providers, gateway={
                "state": {"url": url}, "rate_limits": {"namespace": namespace},
                "store": {"url": str(tmp_path / f"h{i}.db")}, "logging": {"requests": False}})
            gw = await start_gateway(config, host="127.0.0.1", port=0)
            stack.push_async_callback(gw.stop, grace=1.0)
            running.append(gw)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield running, http, a, b


async def post(gw: RunningGateway, http: aiohttp.ClientSession, **extra: Any) -> tuple[int, Any, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    async with http.post(gw.url + "/v1/chat/completions", json=body) as r:
        return r.status, orjson.loads(await r.read()), r.headers


async def test_replicas_share_a_provider_rpm_and_hand_over(redis_url: str, tmp_path: Path) -> None:
    async with replicas(redis_url, tmp_path, {"rate_limits": {"rpm": 5}}, True) as (gws, http, a, b):
        answers = await asyncio.gather(*(post(gws[i % 2], http) for i in range(20)))
        assert [s for s, _, _ in answers] == [200] * 20
        providers = [h["x-labgate-provider"] for _, _, h in answers]
        assert providers.count("first") == 5 and len(a.requests) == 5 and len(b.requests) == 15


async def test_replicas_refuse_when_the_only_provider_is_over(redis_url: str, tmp_path: Path) -> None:
    async with replicas(redis_url, tmp_path, {"rate_limits": {"rpm": 3}}, False) as (gws, http, a, _):
        answers = await asyncio.gather(*(post(gws[i % 2], http) for i in range(10)))
        statuses = sorted(s for s, _, _ in answers)
        assert statuses == [200] * 3 + [429] * 7 and len(a.requests) == 3
        refused = [(b, h) for s, b, h in answers if s == 429]
        assert all(b["error"]["code"] == "rate_limit_exceeded" and int(h["retry-after"]) >= 1 for b, h in refused)


async def test_replicas_share_a_provider_budget(redis_url: str, tmp_path: Path) -> None:
    budget = {"budget": {"limit_usd": 50, "period": "day"}}
    async with replicas(redis_url, tmp_path, budget, False) as (gws, http, a, _):
        answers = [await post(gws[i % 2], http, max_tokens=10) for i in range(8)]
        statuses = [s for s, _, _ in answers]
        assert statuses[0] == 200 and statuses[-1] == 429 and len(a.requests) == statuses.count(200)
        assert answers[-1][1]["error"]["code"] == "insufficient_quota"


async def test_budgets_are_seeded_again_when_redis_comes_back_empty(redis_url: str, tmp_path: Path) -> None:
    import redis.asyncio as aredis

    budget = {"budget": {"limit_usd": 50, "period": "day"}}
    async with replicas(redis_url, tmp_path, budget, False, n=1) as (gws, http, a, _):
        statuses = [(await post(gws[0], http, max_tokens=10))[0] for _ in range(8)]
        assert statuses[0] == 200 and statuses[-1] == 429
        await gws[0].gateway.history.flush()  # type: ignore[union-attr]
        limiter = gws[0].gateway.runtime.limiter
        assert limiter is not None
        client = aredis.Redis.from_url(redis_url)
        try:  # Redis restarted without its data: this namespace's keys are gone
            keys = [k async for k in client.scan_iter(match=limiter.prefix.replace("{", "[{]") + "*")]
            assert keys and await client.delete(*keys) == len(keys)
        finally:
            await client.aclose()
        sent = len(a.requests)
        status, body, _ = await post(gws[0], http, max_tokens=10)  # the take finds no marker: seeds, then takes
        assert (status, body["error"]["code"]) == (429, "insufficient_quota")
        assert len(a.requests) == sent
