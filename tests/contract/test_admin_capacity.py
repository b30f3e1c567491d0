"""``/admin/capacity``: capacity state per provider and region, marking a region down, and a probe."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.timeout(60)
KEY = "sk-admin-capacity-test"
HEADERS = {"authorization": f"Bearer {KEY}"}


@contextlib.asynccontextmanager
async def rig(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RunningGateway, Simulator, Simulator]]:
    monkeypatch.setenv("CAPACITY_TEST_KEY", KEY)
    async with Simulator(Behaviour(latency_s=0.3), models=["m", "solo"]) as west, \
            Simulator(Behaviour(), models=["m"]) as east:
        providers = {
            "west": {"type": "openai_compatible", "base_url": west.url + "/v1", "models": ["m", "solo"], "priority": 1,
                     "region": "us-west-1", "max_parallel_requests": 2, "max_queue": 5},
            "east": {"type": "openai_compatible", "base_url": east.url + "/v1", "models": ["m"], "priority": 2,
                     "region": "us-east-1"}}
        config = config_from(providers, gateway={"auth": {"master_key_env": "CAPACITY_TEST_KEY"}})
        running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False))
        try:
            yield running, west, east
        finally:
            await running.stop(grace=2.0)


async def chat(http: httpx2.AsyncClient, running: RunningGateway, model: str = "m") -> httpx2.Response:
    return await http.post(running.url + "/v1/chat/completions", headers=HEADERS,
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.asyncio
async def test_capacity_shows_in_flight_waiting_and_cap_per_provider_and_region(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig(monkeypatch) as (running, west, _east), httpx2.AsyncClient(timeout=10) as http:
        busy = [asyncio.create_task(chat(http, running, "solo")) for _ in range(4)]  # only west serves it
        gate = running.gateway.runtime.table.gates["west"]
        for _ in range(500):
            if gate.waiting == 2:
                break
            await asyncio.sleep(0.01)
        shown = (await http.get(running.url + "/admin/capacity", headers=HEADERS)).json()
        await asyncio.gather(*busy)
        west_entry = shown["providers"]["west"]
        assert {k: west_entry[k] for k in ("region", "in_flight", "max_parallel_requests", "waiting", "max_queue")} == {
            "region": "us-west-1", "in_flight": 2, "max_parallel_requests": 2, "waiting": 2, "max_queue": 5}
        assert west_entry["deployments"]["west/solo"] == {"in_flight": 2, "failures": 0, "marked_down": False,
                                                       "open_for_s": None, "last_error": None}
        assert shown["regions"]["us-west-1"] == {"providers": 1, "in_flight": 2, "waiting": 2,
                                                 "max_parallel_requests": 2, "down": False}
        assert shown["providers"]["east"]["max_parallel_requests"] is None
        assert shown["draining"] is False and shown["queue"]["shared"] is False
        assert len(west.requests) == 4


@pytest.mark.asyncio
async def test_a_region_marked_down_over_the_api_moves_traffic_and_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig(monkeypatch) as (running, _west, _east), httpx2.AsyncClient(timeout=10) as http:
        down = await http.post(running.url + "/admin/capacity/regions/us-west-1", headers=HEADERS,
                               json={"down": True})
        assert down.json() == {"region": "us-west-1", "down": True, "deployments": ["west/m", "west/solo"]}
        assert (await chat(http, running)).headers["x-labgate-provider"] == "east"
        shown = (await http.get(running.url + "/admin/capacity", headers=HEADERS)).json()
        assert shown["regions"]["us-west-1"]["down"] is True
        assert shown["providers"]["west"]["deployments"]["west/m"]["marked_down"] is True
        await http.post(running.url + "/admin/capacity/regions/us-west-1", headers=HEADERS, json={"down": False})
        assert (await chat(http, running)).headers["x-labgate-provider"] == "west"


@pytest.mark.asyncio
@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/admin/capacity/regions/mars-1", {"down": True}, 404, "region_not_found"),
    ("/admin/capacity/regions/us-west-1", {"down": "yes"}, 400, "invalid_request"),
    ("/admin/capacity/regions/us-west-1", {"down": True, "extra": 1}, 400, "invalid_request"),
    ("/admin/capacity/regions/us-west-1", [1], 400, "invalid_request"),
    ("/admin/capacity/regions/a%2Fb", {"down": True}, 400, "invalid_request"),
    ("/admin/capacity/regions/", {"down": True}, 400, "invalid_request"),
])
async def test_bad_region_requests_are_refused_in_an_envelope(monkeypatch: pytest.MonkeyPatch, path: str, body: Any,
                                                              status: int, code: str | None) -> None:
    async with rig(monkeypatch) as (running, _west, _east), httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(running.url + path, headers=HEADERS, json=body)
        assert answer.status_code == status
        assert answer.json()["error"]["code"] == code and answer.headers["x-request-id"]
        table = running.gateway.runtime.table
        assert all(d.health.open_until == 0.0 for d in table.deployments.values())  # nothing changed
        big = await http.post(running.url + "/admin/capacity/regions/us-west-1", headers=HEADERS,
                              content=b'{"down": true, "pad": "' + b"x" * 5000 + b'"}')
        assert big.status_code == 400


@pytest.mark.asyncio
async def test_only_the_master_key_reads_or_changes_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig(monkeypatch) as (running, _west, _east), httpx2.AsyncClient(timeout=10) as http:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Bearer lg-" + "a" * 43}):
            assert (await http.get(running.url + "/admin/capacity", headers=headers)).status_code == 401
            refused = await http.post(running.url + "/admin/capacity/regions/us-west-1", headers=headers,
                                      json={"down": True})
            assert refused.status_code == 401
        assert running.gateway.runtime.table.deployments["west/m"].health.open_until == 0.0
        foreign = await http.post(running.url + "/admin/capacity/regions/us-west-1",
                                  headers={**HEADERS, "origin": "https://attacker.example"}, json={"down": True})
        assert foreign.status_code == 403  # a browser page of another origin, even with the key
        assert running.gateway.runtime.table.deployments["west/m"].health.open_until == 0.0


@pytest.mark.asyncio
async def test_the_probe_lists_models_and_reports_an_engine_that_does_not_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig(monkeypatch) as (running, _west, east), httpx2.AsyncClient(timeout=10) as http:
        await east.stop()  # the east engine is gone
        answer = (await http.post(running.url + "/admin/capacity/probe", headers=HEADERS)).json()
        assert answer["providers"]["west"]["models"]["ok"] is True
        assert answer["providers"]["west"]["models"]["count"] == 2  # m and solo
        assert answer["providers"]["east"]["models"]["ok"] is False
        only = (await http.post(running.url + "/admin/capacity/probe?region=us-west-1", headers=HEADERS)).json()
        assert list(only["providers"]) == ["west"]
