"""``/health/providers``: per-provider detail only for admin callers; liveness and readiness stay open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from labgate.server.health import DETAIL_HINT, HealthSurface
from labgate.server.http import Request
from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing.gateway import config_from
from labgate.testing.hostile import HostileUpstream, Received, Step, response

pytestmark = pytest.mark.asyncio
ADMIN_KEY = "labgate-admin-health-0123456789"


def models_or_refusal(request: Received) -> Sequence[Step]:
    if request.path == "/up/v1/models":
        return [response(orjson.dumps({"data": [{"id": "m-up"}]}))]
    return [response(b'{"error":{"message":"internal db at 10.0.0.7:5432 is down"}}',
                     status="500 Internal Server Error")]


async def start(up: HostileUpstream, *, auth: bool) -> RunningGateway:
    providers = {
        "up": {"type": "openai_compatible", "base_url": up.url + "/up/v1", "models": ["m-up"]},
        "down": {"type": "openai_compatible", "base_url": up.url + "/down/v1", "models": ["m-down"]},
    }
    gateway: dict[str, Any] = {"store": {"capture": "none"}}
    if auth:
        gateway["auth"] = {"master_key_env": "POOLTEST_HEALTH_KEY"}
    return await start_gateway(config_from(providers, gateway=gateway), host="127.0.0.1", port=0)


@pytest_asyncio.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[RunningGateway, HostileUpstream, aiohttp.ClientSession]]:
    monkeypatch.setenv("POOLTEST_HEALTH_KEY", ADMIN_KEY)
    async with HostileUpstream(models_or_refusal) as up, aiohttp.ClientSession() as http:
        running = await start(up, auth=True)
        try:
            yield running, up, http
        finally:
            await running.stop(grace=1.0)


async def get(running: RunningGateway, http: aiohttp.ClientSession, path: str,
              key: str | None = None) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with http.get(running.url + path, headers=headers) as r:
        return r.status, orjson.loads(await r.read())


AGGREGATE = {"status": "degraded", "active": 2, "reachable": 1, "unreachable": 1, "detail": DETAIL_HINT}


async def test_without_the_key_only_the_aggregate_is_shown(served: Any) -> None:
    running, _, http = served
    for key in (None, "wrong-key-0123456789"):
        status, body = await get(running, http, "/health/providers", key)
        assert (status, body) == (200, AGGREGATE)
        text = orjson.dumps(body).decode()
        assert "127.0.0.1" not in text and "10.0.0.7" not in text and "m-up" not in text


async def test_with_the_key_the_detail_is_shown(served: Any) -> None:
    running, _, http = served
    status, body = await get(running, http, "/health/providers", ADMIN_KEY)
    assert status == 200
    assert body["providers"]["up"]["models"] == ["m-up"]
    assert body["providers"]["down"]["reachable"] is False
    assert "10.0.0.7:5432 is down" in body["providers"]["down"]["error"]


async def test_liveness_and_readiness_stay_open(served: Any) -> None:
    running, _, http = served
    assert await get(running, http, "/health/liveness") == (200, {"status": "alive"})
    assert await get(running, http, "/health/readiness") == (200, {"status": "ready", "models": 2})
    assert (await get(running, http, "/health"))[0] == 200


async def test_concurrent_callers_share_one_probe(served: Any) -> None:
    running, up, http = served
    results = await asyncio.gather(*(get(running, http, "/health/providers") for _ in range(30)))
    assert all(result == (200, AGGREGATE) for result in results)
    probes = [request.path for request in up.requests]
    assert sorted(probes) == ["/down/v1/models", "/up/v1/models"]


async def test_without_auth_the_detail_is_for_loopback_clients_only() -> None:
    async with HostileUpstream(models_or_refusal) as up:
        running = await start(up, auth=False)
        try:
            surface = HealthSurface(running.gateway)
            remote = await surface.providers(Request("GET", "/health/providers", "", {}, b"", "10.1.2.3"))
            assert orjson.loads(remote.body) == AGGREGATE
            local = await surface.providers(Request("GET", "/health/providers", "", {}, b"", "127.0.0.1"))
            assert set(orjson.loads(local.body)["providers"]) == {"up", "down"}
        finally:
            await running.stop(grace=1.0)
