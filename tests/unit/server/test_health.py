"""``/health/readiness``: each state of the definition in docs/observability.md#readiness.

(The SIGTERM drain of a real ``labgate serve`` is in tests/contract/test_cli_serve.py; the
drain with requests queued and in flight in tests/contract/test_capacity.py.)"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.server.health import DETAIL_HINT
from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio
READY = (200, {"status": "ready", "models": 1})
CANNOT_WRITE = (503, {"status": "not_ready", "reason": "the history store cannot be written"})


@asynccontextmanager
async def gateway(base_url: str, **gateway_config: Any) -> AsyncIterator[RunningGateway]:
    config = config_from({"p": {"type": "openai_compatible", "base_url": base_url, "models": ["m"]}},
                         gateway={"store": {"capture": "none"}, **gateway_config})
    running = await start_gateway(config, host="127.0.0.1", port=0)
    try:
        yield running
    finally:
        await running.stop(grace=1.0)


async def get(running: RunningGateway, path: str = "/health/readiness") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(running.url + path) as r:
        return r.status, orjson.loads(await r.read())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when this returns: nothing listens there


async def test_ready_with_a_routable_model() -> None:
    async with Simulator(models=["m"]) as sim, gateway(sim.url + "/v1") as running:
        assert await get(running) == READY


async def test_unready_when_no_model_is_routable() -> None:
    running = await start_gateway(config_from({}, gateway={"store": {"capture": "none"}}), host="127.0.0.1", port=0)
    try:
        assert await get(running) == (503, {"status": "not_ready", "reason": "no model is routable"})
        assert (await get(running, "/health/liveness"))[0] == 200  # alive all the same: nothing to restart
    finally:
        await running.stop(grace=1.0)


async def test_no_provider_reachable_leaves_it_ready() -> None:
    """Providers are shared by every replica: their outage must not empty the load balancer's pool."""
    async with gateway(f"http://127.0.0.1:{closed_port()}/v1") as running:
        status, report = await get(running, "/health/providers")  # the detail: loopback, no auth
        assert (status, report["providers"]["p"]["reachable"]) == (200, False)
        assert await get(running) == READY


async def test_unready_while_draining() -> None:
    async with Simulator(models=["m"]) as sim:
        config = config_from({"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}},
                             gateway={"store": {"capture": "none"}, "server": {"drain_delay_s": 30}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        assert await get(running) == READY
        stopping = asyncio.create_task(running.stop(grace=1.0))
        await asyncio.sleep(0)  # stop() turns draining on before its first await
        assert running.gateway.draining
        # the listener stays open through drain_delay_s so that load balancers can see this
        assert await get(running) == (503, {"status": "not_ready", "reason": "shutting down"})
        stopping.cancel()  # the 30 s delay is not waited out: the rest of stop(), by hand
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert running.gateway.history is None  # capture: none; nothing else to close
        await running.server.shutdown(1.0)
        if running.reloader is not None:
            await running.reloader.aclose()
        await running.gateway.runtime.aclose()


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_unready_until_the_history_store_can_be_written(tmp_path: Path, writer: str) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    store = {"url": str(blocker / "history.db"), "writer": writer, "capture": "metadata",
             "flush_interval_s": 0.05}
    async with Simulator(models=["m"]) as sim, gateway(sim.url + "/v1", store=store) as running:
        assert await get(running) == CANNOT_WRITE
        blocker.unlink()
        blocker.mkdir()
        # the writer retries with a backoff (0.5 s, 1 s, 2 s, ...): the bound is a count of its retries,
        # not a guess at how long one takes
        deadline = time.monotonic() + 60
        while (answer := await get(running)) == CANNOT_WRITE:
            assert time.monotonic() < deadline, running.gateway.history and running.gateway.history.stats()
            await asyncio.sleep(0.1)
        assert answer == READY
        async with aiohttp.ClientSession() as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(running.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
        assert running.gateway.history is not None
        await running.gateway.history.flush()
        assert (running.gateway.history.stats()["written"], await get(running)) == (1, READY)


# --- /health/providers: what each provider's probe says, and how the aggregate adds them up


@asynccontextmanager
async def providers_gateway(providers: dict[str, Any]) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(config_from(providers, gateway={"store": {"capture": "none"}}),
                                  host="127.0.0.1", port=0)
    try:
        yield running
    finally:
        await running.stop(grace=1.0)


def listed(sim: Simulator) -> int:
    """How many times the gateway asked ``sim`` for its models."""
    return sum(1 for r in sim.requests if r.path == "/v1/models")


async def aggregate_of(running: RunningGateway) -> dict[str, Any]:
    """What a caller the admin API would not admit sees (the detail is for loopback callers when auth is off)."""
    from labgate.server.health import aggregate

    status, report = await get(running, "/health/providers")
    assert status == 200
    return aggregate(report)


async def test_each_provider_state_in_the_detail() -> None:
    async with Simulator(models=["m", "n"]) as sim:
        providers = {
            "up": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m", "gone"]},
            "off": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["n"], "status": "inactive"},
            "dead": {"type": "openai_compatible", "base_url": f"http://127.0.0.1:{closed_port()}/v1",
                     "models": ["d"]}}
        async with providers_gateway(providers) as running:
            status, report = await get(running, "/health/providers")
            assert status == 200
            up, off, dead = (report["providers"][name] for name in ("up", "off", "dead"))
            assert up["latency_ms"] >= 0
            assert {**up, "latency_ms": 0} == {"status": "active", "reachable": True, "latency_ms": 0,
                                               "models": ["m", "n"], "configured_models": ["m", "gone"],
                                               "missing_models": ["gone"]}
            assert off == {"status": "inactive", "reachable": None}  # never probed
            assert listed(sim) == 1  # "up" only
            assert (dead["status"], dead["reachable"], dead["configured_models"]) == ("active", False, ["d"])
            assert dead["error"].startswith("cannot connect to provider 'dead'") and dead["latency_ms"] >= 0
            assert await aggregate_of(running) == {"status": "degraded", "active": 2, "reachable": 1,
                                                   "unreachable": 1, "detail": DETAIL_HINT}


@pytest.mark.parametrize(("alive", "status"), [((True, True), "ok"), ((True, False), "degraded"),
                                               ((False, False), "down")])
async def test_the_aggregate_status(alive: tuple[bool, bool], status: str) -> None:
    async with Simulator(models=["m"]) as sim:
        dead = f"http://127.0.0.1:{closed_port()}/v1"
        providers = {f"p{i}": {"type": "openai_compatible", "base_url": sim.url + "/v1" if up else dead,
                               "models": ["m"]} for i, up in enumerate(alive)}
        async with providers_gateway(providers) as running:
            assert await aggregate_of(running) == {"status": status, "active": 2, "reachable": sum(alive),
                                                   "unreachable": 2 - sum(alive), "detail": DETAIL_HINT}


async def test_probes_are_shared_for_a_while_then_made_again(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Simulator(models=["m"]) as sim, providers_gateway(
            {"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}}) as running:
        monkeypatch.setattr("labgate.server.health._PROBE_CACHE_S", 3600.0)
        await get(running, "/health/providers")
        await get(running, "/health/providers")
        assert listed(sim) == 1  # the second caller got the first probe's result
        monkeypatch.setattr("labgate.server.health._PROBE_CACHE_S", 0.0)
        await get(running, "/health/providers")
        await get(running, "/health/providers")
        assert listed(sim) == 3  # past the cache time, each caller probes again


async def test_health_counts_providers_and_models_and_is_never_cached() -> None:
    async with Simulator(models=["m"]) as sim, gateway(sim.url + "/v1") as running:
        async with aiohttp.ClientSession() as http:
            for path in ("/health", "/health/readiness", "/health/providers"):
                async with http.get(running.url + path) as r:
                    assert r.headers["cache-control"] == "no-store", path
        assert await get(running, "/health") == (200, {"status": "ok", "providers": 1, "models": 1})


async def test_ready_while_refusing_the_clusters_config_and_says_so() -> None:
    """A replica that refuses the config the cluster announced keeps serving its previous one: still ready."""
    rejected = {"version": "v2", "serving": "v1", "at": 1.0, "errors": ["providers.p: bad"]}
    async with Simulator(models=["m"]) as sim, gateway(sim.url + "/v1") as running:
        running.gateway.replicas = SimpleNamespace(rejected=None)  # type: ignore[assignment]
        assert await get(running) == READY
        running.gateway.replicas = SimpleNamespace(rejected=rejected)  # type: ignore[assignment]
        assert await get(running) == (200, {"status": "ready", "models": 1,
                                            "config": {"status": "rejected", **rejected}})
        running.gateway.replicas = None


class _Clock:
    """``time`` as the health module sees it: perf_counter steps by ``step`` at each call."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 100.0, step
        self.monotonic = time.monotonic

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize("up", [True, False])
async def test_the_probe_latency_is_in_milliseconds_to_a_tenth(monkeypatch: pytest.MonkeyPatch, up: bool) -> None:
    monkeypatch.setattr("labgate.server.health.time", _Clock(0.01234))  # 12.34 ms between the two reads
    async with Simulator(models=["m"]) as sim:
        url = sim.url + "/v1" if up else f"http://127.0.0.1:{closed_port()}/v1"
        async with providers_gateway({"p": {"type": "openai_compatible", "base_url": url, "models": ["m"]}}) as running:
            status, report = await get(running, "/health/providers")
            assert (status, report["providers"]["p"]["reachable"], report["providers"]["p"]["latency_ms"]) == (
                200, up, 12.3)


async def test_a_provider_that_cannot_list_its_models_is_shown_unprobed() -> None:
    class NoLister:  # an adapter without list_models (ModelLister is optional)
        pass

    async with Simulator(models=["m"]) as sim, providers_gateway(
            {"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}}) as running:
        adapters = dict(running.gateway.runtime.adapters)
        real, adapters["p"] = adapters["p"], NoLister()
        monkey = running.gateway.runtime
        object.__setattr__(monkey, "adapters", adapters)
        try:
            status, report = await get(running, "/health/providers")
        finally:
            adapters["p"] = real
        assert (status, report) == (200, {"providers": {"p": {"status": "active", "reachable": None,
                                                                "configured_models": ["m"]}}})
        assert listed(sim) == 0
        assert await aggregate_of(running) == {"status": "ok", "active": 1, "reachable": 0, "unreachable": 0,
                                               "detail": DETAIL_HINT}


async def test_a_probe_serves_for_less_than_the_cache_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """At exactly ``_PROBE_CACHE_S`` old, a probe's result is stale (the clock stands still here)."""
    monkeypatch.setattr("labgate.server.health.time", SimpleNamespace(monotonic=lambda: 500.0,
                                                                      perf_counter=time.perf_counter))
    monkeypatch.setattr("labgate.server.health._PROBE_CACHE_S", 0.0)
    async with Simulator(models=["m"]) as sim, providers_gateway(
            {"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}}) as running:
        await get(running, "/health/providers")
        await get(running, "/health/providers")
        assert listed(sim) == 2
