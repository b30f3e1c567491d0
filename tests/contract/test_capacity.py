"""Capacity through a real gateway: busy is not broken, caps hold under load, the queue is fair.

Each test runs its own simulators (one per deployment) and gateway on the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from labgate.routing.gate import Gate
from labgate.server.serve import RunningGateway, start_gateway
from labgate.store import query, store_for
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator, Status
from labgate.testing.counting import CountingSimulator as Counting
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.timeout(60)
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Rig:
    gateway: RunningGateway
    http: httpx2.AsyncClient

    async def chat(self, model: str = "m", **headers: str) -> httpx2.Response:
        return await self.http.post(self.gateway.url + "/v1/chat/completions",
                                    json={"model": model, **CHAT}, headers=headers)

    def health(self, provider: str) -> Any:
        return self.gateway.gateway.runtime.table.deployments[f"{provider}/m"].health


def queued(gate: Gate, count: int) -> bool:
    return gate.waiting == count


def settled(task: asyncio.Task[Any], sim: Simulator, held: int) -> bool:
    """The request was answered, or reached ``sim`` beside the ``held`` ones already there."""
    return task.done() or len(sim.requests) > held


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``condition`` (state of the gateway or a simulator) until it holds; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.002)


def provider(sim: Simulator, **extra: Any) -> dict[str, Any]:
    return {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"], **extra}


@contextlib.asynccontextmanager
async def rig(providers: dict[str, Any], mappings: dict[str, Any] | None = None,
              gateway: dict[str, Any] | None = None) -> AsyncIterator[Rig]:
    running = await start_gateway(config_from(providers, mappings, gateway), host="127.0.0.1", port=0,
                                  access_log=AccessLog(enabled=False))
    try:
        async with httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_connections=200)) as http:
            yield Rig(running, http)
    finally:
        await running.stop(grace=2.0)


@pytest.mark.asyncio
async def test_a_busy_deployment_is_skipped_at_once_and_its_circuit_stays_closed() -> None:
    """Issue 17 item 7: a deployment at its cap is not failing; the next candidate answers without delay.

    Before: the second request waited for the pool's one connection until the provider's timeout,
    the wait's timeout counted as a circuit failure (threshold 1), and the circuit opened.
    """
    async with Simulator(Behaviour(latency_s=0.6), models=["m"]) as slow, \
            Simulator(Behaviour(), models=["m"]) as spare:
        providers = {"local": provider(slow, max_parallel_requests=1, max_queue=0, timeout_s=3),
                     "cloud": provider(spare)}
        mappings = {"routing": {"exact_matches": {"m": {"provider": "local", "fallback_chain": ["cloud"]}}}}
        gateway = {"resilience": {"circuit": {"failure_threshold": 1, "cooldown_s": 60}}}
        async with rig(providers, mappings, gateway) as r:
            first = asyncio.create_task(r.chat())
            await until(lambda: bool(slow.requests))
            started = time.monotonic()
            second = await r.chat()
            spilled_after = time.monotonic() - started
            assert (second.status_code, second.headers["x-labgate-deployment"]) == (200, "cloud/m")
            assert spilled_after < 0.4  # not after local's timeout (3 s) nor after its answer (0.6 s)
            assert (await first).headers["x-labgate-deployment"] == "local/m"
            assert (r.health("local").failures, r.health("local").open_until) == (0, 0.0)
            third = await r.chat()
            assert third.headers["x-labgate-deployment"] == "local/m"  # its circuit never opened


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", ["least_busy", "round_robin"])
async def test_no_deployment_ever_exceeds_its_cap_under_64_concurrent_clients(strategy: str) -> None:
    fast, slow = Counting(Behaviour(latency_s=0.02), models=["m"]), Counting(Behaviour(latency_s=0.08), models=["m"])
    async with fast, slow:
        providers = {"fast": provider(fast, max_parallel_requests=4), "slow": provider(slow, max_parallel_requests=4)}
        mappings = {"routing": {"load_balancing": {"m": {"strategy": strategy, "deployments": [
            {"provider": "fast"}, {"provider": "slow"}]}}}}
        async with rig(providers, mappings) as r:
            answers = await asyncio.gather(*(r.chat() for _ in range(64 * 3)))
            assert sorted({a.status_code for a in answers}) == [200]
            served = {name: sum(a.headers["x-labgate-deployment"] == f"{name}/m" for a in answers)
                      for name in ("fast", "slow")}
            assert (fast.peak, slow.peak) == (4, 4)  # both were saturated, neither ever over
            assert served["fast"] > served["slow"]  # the faster engine frees its slots more often
            gates = r.gateway.gateway.runtime.table.gates
            assert [(g.inflight, g.waiting) for g in gates.values()] == [(0, 0), (0, 0)]


@pytest.mark.asyncio
async def test_queued_requests_are_served_by_priority_then_in_arrival_order() -> None:
    async with Simulator(Behaviour(latency_s=0.05), models=["m"]) as sim, \
            rig({"p": provider(sim, max_parallel_requests=1)}) as r:
        gate = r.gateway.gateway.runtime.table.gates["p"]
        sim.set(Behaviour(latency_s=1.0), model="m")  # the blocker holds the slot until all have queued
        blocker = asyncio.create_task(r.chat())
        await until(lambda: bool(sim.requests))
        order = ["low", "normal", "high", "low", "critical", "normal", "high"]
        tasks = []
        for i, priority in enumerate(order):
            tasks.append(asyncio.create_task(r.http.post(
                r.gateway.url + "/v1/chat/completions", headers={"x-labgate-priority": priority},
                json={"model": "m", **CHAT, "user": f"{i}-{priority}"})))
            await until(functools.partial(queued, gate, i + 1))  # in order, while the blocker holds the slot
        sim.set(Behaviour(latency_s=0.01), model="m")
        assert {a.status_code for a in await asyncio.gather(blocker, *tasks)} == {200}
        served = [q.body["user"] for q in sim.requests[1:]]
        assert served == ["4-critical", "2-high", "6-high", "1-normal", "5-normal", "0-low", "3-low"]


@pytest.mark.asyncio
async def test_overflow_gets_the_configured_status_with_retry_after() -> None:
    async with Simulator(Behaviour(latency_s=0.3), models=["m"]) as sim:
        gateway = {"queue": {"overflow_status": 429, "retry_after_s": 7}}
        async with rig({"p": provider(sim, max_parallel_requests=1, max_queue=1)}, gateway=gateway) as r:
            held = asyncio.create_task(r.chat())
            await until(lambda: bool(sim.requests))
            queued = asyncio.create_task(r.chat())
            await until(lambda: r.gateway.gateway.runtime.table.gates["p"].waiting == 1)
            refused = await r.chat()
            body = orjson.loads(refused.content)
            assert (refused.status_code, refused.headers["retry-after"], body["error"]["code"],
                    body["error"]["type"]) == (429, "7", "queue_full", "rate_limit_error")
            assert [(await t).status_code for t in (held, queued)] == [200, 200]


@pytest.mark.asyncio
async def test_a_queue_timeout_is_a_503_with_retry_after_and_frees_the_place() -> None:
    async with Simulator(Behaviour(latency_s=0.5), models=["m"]) as sim:
        gateway = {"queue": {"timeout_s": 0.1}}
        async with rig({"p": provider(sim, max_parallel_requests=1)}, gateway=gateway) as r:
            held = asyncio.create_task(r.chat())
            await until(lambda: bool(sim.requests))
            late = await r.chat()
            body = orjson.loads(late.content)
            assert (late.status_code, "retry-after" in late.headers, body["error"]["code"]) == (
                503, True, "queue_timeout")
            assert r.gateway.gateway.runtime.table.gates["p"].waiting == 0
            assert (await held).status_code == 200


@pytest.mark.asyncio
async def test_a_client_that_leaves_the_queue_frees_its_place_at_once() -> None:
    async with Simulator(Behaviour(latency_s=0.3), models=["m"]) as sim, \
            rig({"p": provider(sim, max_parallel_requests=1, max_queue=1)}) as r:
        gate = r.gateway.gateway.runtime.table.gates["p"]
        held = asyncio.create_task(r.chat())
        await until(lambda: bool(sim.requests))
        leaving = asyncio.create_task(r.chat())
        await until(lambda: gate.waiting == 1)
        leaving.cancel()  # the client closes its connection while queued
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        await until(lambda: gate.waiting == 0)
        taken = asyncio.create_task(r.chat())  # the freed place is there for the next one
        assert [(await t).status_code for t in (held, taken)] == [200, 200]
        assert (gate.inflight, gate.waiting, len(sim.requests)) == (0, 0, 2)


@pytest.mark.asyncio
async def test_an_unknown_priority_is_a_400_when_the_request_has_to_queue() -> None:
    async with Simulator(Behaviour(latency_s=0.2), models=["m"]) as sim, \
            rig({"p": provider(sim, max_parallel_requests=1)}) as r:
        held = asyncio.create_task(r.chat())
        await until(lambda: bool(sim.requests))
        bad = await r.chat(**{"x-labgate-priority": "urgent!"})
        assert (bad.status_code, orjson.loads(bad.content)["error"]["param"]) == (400, "x-labgate-priority")
        assert (await held).status_code == 200


@pytest.mark.asyncio
async def test_prefer_local_under_spills_exactly_when_local_load_crosses_the_threshold() -> None:
    async with Simulator(Behaviour(latency_s=1.0), models=["m"]) as local, \
            Simulator(Behaviour(), models=["m"]) as cloud:
        providers = {"local": provider(local, max_parallel_requests=4), "cloud": provider(cloud)}
        mappings = {"routing": {"prefer_local_under": 0.5,
                                "exact_matches": {"m": {"provider": "local", "fallback_chain": ["cloud"]}}}}
        async with rig(providers, mappings) as r:
            held: list[asyncio.Task[httpx2.Response]] = []
            seen: list[tuple[int, str, str | None]] = []
            for in_flight in range(3):  # 0 and 1 in flight: under 50 % of 4; 2: at it
                await until(functools.partial(lambda n: len(local.requests) == n, in_flight))
                task = asyncio.create_task(r.chat())
                await until(functools.partial(settled, task, local, len(held)))
                if task.done():
                    answer = await task
                    seen.append((in_flight, answer.headers["x-labgate-deployment"],
                                 answer.headers.get("x-labgate-spill")))
                else:
                    held.append(task)
                    seen.append((in_flight, "local/m", None))
            assert seen == [(0, "local/m", None), (1, "local/m", None),
                            (2, "cloud/m", "local/m at 2/4 in flight (prefer_local_under)")]
            assert [(await t).headers["x-labgate-deployment"] for t in held] == ["local/m", "local/m"]


@pytest.mark.asyncio
async def test_prefer_local_under_with_nothing_to_spill_to_still_uses_the_free_local_slots() -> None:
    async with Simulator(Behaviour(latency_s=0.5), models=["m"]) as local:
        mappings = {"routing": {"prefer_local_under": 0.5}}
        async with rig({"local": provider(local, max_parallel_requests=2)}, mappings) as r:
            first = asyncio.create_task(r.chat())
            await until(lambda: len(local.requests) == 1)
            second = await r.chat()  # 1 of 2 in flight: over the threshold, but nothing else serves "m"
            assert (second.status_code, second.headers.get("x-labgate-spill"), (await first).status_code) == (
                200, None, 200)


@pytest.mark.asyncio
async def test_metrics_show_in_flight_capacity_queue_depth_and_wait() -> None:
    async with Simulator(Behaviour(latency_s=0.3), models=["m"]) as sim, \
            rig({"p": provider(sim, max_parallel_requests=1)}) as r:
        gate = r.gateway.gateway.runtime.table.gates["p"]
        held = asyncio.create_task(r.chat())
        await until(lambda: bool(sim.requests))
        queued = asyncio.create_task(r.chat())
        await until(lambda: gate.waiting == 1)
        during = (await r.http.get(r.gateway.url + "/metrics")).text.splitlines()
        await asyncio.gather(held, queued)
        after = (await r.http.get(r.gateway.url + "/metrics")).text.splitlines()
    assert [line for line in during if line.startswith(("labgate_provider_", "labgate_queue_depth"))] == [
        'labgate_provider_in_flight{provider="p"} 1', 'labgate_provider_capacity{provider="p"} 1',
        'labgate_queue_depth{provider="p"} 1']
    assert [line for line in after if line.startswith("labgate_queue_wait_seconds_count")] == [
        "labgate_queue_wait_seconds_count{} 1"]


# ---------------------------------------------------------------- tiers and regions


TIER_CIRCUIT = {"resilience": {"circuit": {"failure_threshold": 1, "cooldown_s": 0.3}}}


def tiers(primary: Simulator, backup: Simulator) -> dict[str, Any]:
    return {"west": provider(primary, priority=1, region="us-west-1"),
            "east": provider(backup, priority=2, region="us-east-1", failover_only=True)}


@pytest.mark.asyncio
async def test_failover_only_takes_traffic_only_while_the_primary_tier_is_down_and_gives_it_back() -> None:
    async with Simulator(Behaviour(), models=["m"]) as primary, Simulator(Behaviour(), models=["m"]) as backup, \
            rig(tiers(primary, backup), gateway=TIER_CIRCUIT) as r:
        served = [(await r.chat()).headers["x-labgate-deployment"]]
        primary.set(Behaviour(fault=Status(500)))
        failing = await r.chat()  # the primary was healthy when planned: no failover for this request
        served.append(f"{failing.status_code}")
        served.append((await r.chat()).headers["x-labgate-deployment"])  # its circuit is open: the backup
        primary.set(Behaviour())
        await asyncio.sleep(0.35)  # the cooldown ends: the next request probes the primary
        served += [(await r.chat()).headers["x-labgate-deployment"] for _ in range(2)]
        assert served == ["west/m", "502", "east/m", "west/m", "west/m"]
        assert len(backup.requests) == 1


@pytest.mark.asyncio
async def test_a_region_marked_down_moves_its_traffic_to_the_next_tier_and_back() -> None:
    async with Simulator(Behaviour(), models=["m"]) as primary, Simulator(Behaviour(), models=["m"]) as backup, \
            rig(tiers(primary, backup), gateway=TIER_CIRCUIT) as r:
        table = r.gateway.gateway.runtime.table
        assert table.mark_region("us-west-1", down=True) == ["west/m"]
        down = [(await r.chat()).headers["x-labgate-deployment"] for _ in range(2)]
        table.mark_region("us-west-1", down=False)
        up = [(await r.chat()).headers["x-labgate-deployment"] for _ in range(2)]
        assert (down, up) == (["east/m", "east/m"], ["west/m", "west/m"])


@pytest.mark.asyncio
async def test_every_region_down_is_a_503_with_retry_after() -> None:
    async with Simulator(Behaviour(), models=["m"]) as primary, Simulator(Behaviour(), models=["m"]) as backup, \
            rig(tiers(primary, backup), gateway=TIER_CIRCUIT) as r:
        table = r.gateway.gateway.runtime.table
        table.mark_region("us-west-1", down=True)
        table.mark_region("us-east-1", down=True)
        answer = await r.chat()
        assert (answer.status_code, answer.headers["retry-after"], answer.json()["error"]["code"]) == (
            503, "1", "no_healthy_deployment")


# ---------------------------------------------------------------- shutdown drain


async def history(url: str) -> dict[str, dict[str, Any]]:
    store = store_for(url)
    await store.open()
    try:
        return {r["client_request_id"]: r async for r in query.walk(store, query.Filter())}
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_shutdown_answers_the_queue_with_503_and_lets_in_flight_requests_and_streams_finish(
        tmp_path: Path) -> None:
    store_url = str(tmp_path / "history.db")
    async with Simulator(Behaviour(latency_s=0.4, tokens_per_s=20, completion_tokens=6), models=["m"]) as sim:
        config = config_from({"p": provider(sim, max_parallel_requests=2)}, gateway={
            "server": {"drain_delay_s": 1.0},
            "store": {"url": store_url, "writer": "thread", "flush_interval_s": 0.05}})
        running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False))
        gate = running.gateway.runtime.table.gates["p"]
        async with httpx2.AsyncClient(timeout=20) as http:
            url = running.url + "/v1/chat/completions"

            async def call(rid: str, stream: bool) -> httpx2.Response:
                return await http.post(url, json={"model": "m", **CHAT, "stream": stream},
                                       headers={"x-request-id": rid})

            flying = [asyncio.create_task(call("stream", True)), asyncio.create_task(call("plain", False))]
            await until(lambda: gate.inflight == 2)
            queued = [asyncio.create_task(call(f"queued-{i}", i % 2 == 0)) for i in range(3)]
            await until(lambda: gate.waiting == 3)
            stopping = asyncio.create_task(running.stop(grace=10))
            await until(lambda: running.gateway.draining)
            ready = await http.get(running.url + "/health/readiness")
            refused = await asyncio.gather(*queued)
            done = await asyncio.gather(*flying)
            await stopping
    assert ready.status_code == 503
    assert [(r.status_code, r.headers["retry-after"], r.json()["error"]["code"]) for r in refused] == [
        (503, "1", "shutting_down")] * 3
    assert [r.status_code for r in done] == [200, 200]
    assert done[0].content.endswith(b"data: [DONE]\n\n")
    found = await history(store_url)
    assert {rid: (r["status"], r["outcome"]) for rid, r in found.items()} == {
        "stream": (200, "ok"), "plain": (200, "ok"), "queued-0": (503, "error"), "queued-1": (503, "error"),
        "queued-2": (503, "error")}
