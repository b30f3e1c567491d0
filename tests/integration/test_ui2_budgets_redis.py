"""``GET /admin/budgets`` on the real Redis: the spend a request settled is what the listing reads (one MGET);
with Redis gone the budgets are still listed, without their use.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); skips with the reason when Redis cannot be reached.
The outage is a port nothing listens on (no shared server is stopped).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.server.serve import start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
MASTER = "sk-ui2-budgets-redis-0123456789"
ENV = "LABGATE_UI2_BUDGETS_REDIS_MASTER"



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _budgets(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/admin/budgets", headers={"authorization": f"Bearer {MASTER}"}) as r:
        assert r.status == 200
        data: dict[str, Any] = orjson.loads(await r.read())
        return data


@pytest.mark.parametrize("reachable", [True, False])
async def test_budgets_read_from_redis(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
                                       reachable: bool) -> None:
    url = request.getfixturevalue("redis_url") if reachable else f"redis://127.0.0.1:{_free_port()}/0"
    monkeypatch.setenv(ENV, MASTER)
    async with Simulator(models=["m"]) as sim, aiohttp.ClientSession() as http:
        config = config_from(
            {"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"],
                     "pricing": {"input_per_1m": 1000.0, "output_per_1m": 2000.0}}},
            gateway={"auth": {"master_key_env": ENV, "virtual_keys": False}, "logging": {"requests": False},
                     "store": {"capture": "none"},
                     "rate_limits": {"url": url, "namespace": "ui2-" + uuid.uuid4().hex[:8]},
                     "budgets": {"limits": [{"scope": "global", "limit_usd": 100, "period": "day"}]}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "spend"}]}
            async with http.post(running.url + "/v1/chat/completions", json=body,
                                 headers={"authorization": f"Bearer {MASTER}"}) as r:
                await r.read()
            await running.gateway.runtime.limiter.drain()  # type: ignore[union-attr]
            await asyncio.sleep(0)
            listing = await _budgets(http, running.url)
            assert listing["backend"] == "redis"
            [row] = listing["data"]
            if reachable:
                assert listing["error"] is None and row["used_usd"] > 0
                assert row["remaining_usd"] == pytest.approx(100 - row["used_usd"])
            else:
                assert row["used_usd"] is None and row["remaining_usd"] is None
                assert str(listing["error"]).startswith("The limits backend cannot be read now")
            assert (row["budget"], row["limit_usd"], row["period"]) == ("global", 100.0, "day")
        finally:
            await running.stop(grace=1.0)
