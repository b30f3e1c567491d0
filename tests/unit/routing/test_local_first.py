"""``strategy: local_first``: the cloud only when local deployments are failing or past ``prefer_local_under``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from labgate.server.serve import start_gateway
from labgate.testing import Behaviour, Simulator
from labgate.testing.behaviour import Status
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio


def _mappings(prefer: float) -> dict[str, Any]:
    return {"routing": {"load_balancing": {"m": {
        "strategy": "local_first", "prefer_local_under": prefer,
        "deployments": [{"provider": "cloud"}, {"provider": "local"}]}}}}  # listed cloud first on purpose


async def _chat(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        await r.read()
        return r.status, r.headers.get("x-labgate-provider", ""), r.headers.get("x-labgate-routing", "")


async def test_local_first_prefers_local_then_spills_to_the_cloud(tmp_path: Path) -> None:
    async with Simulator(Behaviour(latency_s=0.3), models=["m"]) as local, Simulator(models=["m"]) as cloud, \
            aiohttp.ClientSession() as http:
        providers = {"local": {"type": "ollama", "base_url": local.url, "models": ["m"], "max_parallel_requests": 2},
                     "cloud": {"type": "openai_compatible", "base_url": cloud.url + "/v1", "models": ["m"]}}
        config = config_from(providers, _mappings(0.5), gateway={"store": {"url": str(tmp_path / "h.db")},
                                                                 "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            assert await _chat(http, running.url) == (200, "local", "local")
            # one request in flight on the local engine is half its capacity: the next goes to the cloud
            first = asyncio.ensure_future(_chat(http, running.url))
            await asyncio.sleep(0.1)
            assert await _chat(http, running.url) == (200, "cloud", "cloud (local over prefer_local_under)")
            assert await first == (200, "local", "local")
            # the local engine fails: the attempt falls back to the cloud; once its circuit opens, plans say so
            local.set(Behaviour(fault=Status(500)))
            for _ in range(3):
                status, provider, _ = await _chat(http, running.url)
                assert (status, provider) == (200, "cloud")
            assert await _chat(http, running.url) == (200, "cloud", "cloud (local failing)")
        finally:
            await running.stop(grace=1.0)


async def test_other_strategies_say_nothing(tmp_path: Path) -> None:
    async with Simulator(models=["m"]) as sim, aiohttp.ClientSession() as http:
        config = config_from({"local": {"type": "ollama", "base_url": sim.url, "models": ["m"]}},
                             gateway={"store": {"url": str(tmp_path / "h.db")}, "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            assert await _chat(http, running.url) == (200, "local", "")
        finally:
            await running.stop(grace=1.0)
