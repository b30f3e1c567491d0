"""Capacity across replicas on the real Redis: three ``labgate serve`` processes share one engine's
``max_parallel_requests`` (the simulator records how many requests it ever served at once).

Needs ``REDIS_URL`` (default: the machine's); skips with the reason when it is unreachable
(``LABGATE_REQUIRE_INTEGRATION=1`` turns that into a failure).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from labgate.routing.gate import Gate
from labgate.routing.leases import KEY_PREFIX, Leases
from labgate.state.redis import RedisLink
from labgate.testing import Behaviour, Simulator
from labgate.testing.counting import CountingSimulator as Counting
from labgate.testing.process import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
CAP, CLIENTS = 4, 48


@pytest.fixture
def engine() -> Iterator[Counting]:
    with Counting(Behaviour(latency_s=0.1), models=["m"]).run_in_thread() as sim:
        yield sim


def _config(tmp_path: Path, sim: Simulator, redis_url: str, namespace: str, *, shared: bool = True,
            ttl: float = 10.0) -> Path:
    directory = tmp_path / f"config-{namespace}-{shared}"
    directory.mkdir()
    providers = {"providers": {"gpu": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"],
                                       "max_parallel_requests": CAP}}}
    gateway = {"state": {"url": redis_url, "timeout_s": 2.0}, "logging": {"requests": False},
               "store": {"capture": "none"},
               "queue": {"namespace": namespace, "shared": shared, "lease_ttl_s": ttl, "shared_poll_s": 0.02,
                         "timeout_s": 60}}
    (directory / "providers.yaml").write_text(yaml.safe_dump(providers))
    (directory / "gateway.yaml").write_text(yaml.safe_dump(gateway))
    (directory / "model-mappings.yaml").write_text("routing: {}\n")
    return directory


def _replicas(config: Path, tmp_path: Path, count: int, name: str = "replica") -> Fleet:
    """``count`` gateways of one config, each logging to its own file."""
    return Fleet.start([config] * count, [tmp_path / f"{config.name}-{name}{i}.log" for i in range(count)])


async def _chat(http: aiohttp.ClientSession, url: str) -> int:
    async with http.post(url + "/v1/chat/completions",
                         json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}) as r:
        await r.read()
        return r.status


async def _burst(replicas: Fleet) -> list[int]:
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=90)) as http:
        await asyncio.to_thread(replicas.wait_live)
        return await asyncio.gather(*(_chat(http, replicas.urls[i % len(replicas.urls)]) for i in range(CLIENTS)))


def _clean(redis_url: str, namespace: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        left = int(client.zcard(f"{KEY_PREFIX}:{namespace}:gpu"))
        client.delete(f"{KEY_PREFIX}:{namespace}:gpu")
        return left
    finally:
        client.close()


def test_three_replicas_never_send_the_engine_more_than_its_cap(tmp_path: Path, engine: Counting,
                                                               redis_url: str) -> None:
    namespace = "t" + uuid.uuid4().hex[:12]
    replicas = _replicas(_config(tmp_path, engine, redis_url, namespace), tmp_path, 3)
    try:
        statuses = asyncio.run(_burst(replicas))
    finally:
        replicas.stop()
    assert statuses == [200] * CLIENTS
    assert engine.peak == CAP  # saturated, never over, although each replica alone allows CAP
    assert _clean(redis_url, namespace) == 0  # every lease was given back


def test_without_sharing_each_replica_counts_alone_and_the_engine_gets_more(tmp_path: Path, engine: Counting,
                                                                           redis_url: str) -> None:
    """The control: the same load with ``queue.shared: false`` goes over the engine's cap."""
    replicas = _replicas(_config(tmp_path, engine, redis_url, "unshared", shared=False), tmp_path, 3)
    try:
        statuses = asyncio.run(_burst(replicas))
    finally:
        replicas.stop()
    assert statuses == [200] * CLIENTS
    assert CAP < engine.peak <= 3 * CAP


def test_a_crashed_replicas_leases_expire_and_its_slots_go_to_the_others(tmp_path: Path, redis_url: str) -> None:
    namespace = "t" + uuid.uuid4().hex[:12]
    with Counting(Behaviour(latency_s=3600), models=["m"]).run_in_thread() as stuck:
        config = _config(tmp_path, stuck, redis_url, namespace, ttl=1.0)
        crashing, survivor = _replicas(config, tmp_path, 1, "crashing"), _replicas(config, tmp_path, 1, "survivor")
        try:
            async def scenario() -> tuple[int, int, float]:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                    await asyncio.to_thread(crashing.wait_live)
                    await asyncio.to_thread(survivor.wait_live)
                    held = [asyncio.create_task(_chat(http, crashing.urls[0])) for _ in range(CAP)]
                    for _ in range(3000):  # until the crashing replica holds every slot of the engine
                        if stuck.now == CAP:
                            break
                        await asyncio.sleep(0.01)
                    assert stuck.now == CAP
                    crashing.procs[0].kill()  # SIGKILL: nothing given back
                    await asyncio.gather(*held, return_exceptions=True)
                    stuck.set(Behaviour(latency_s=0.01), model="m")
                    started = time.monotonic()
                    status = await _chat(http, survivor.urls[0])  # waits in line until the leases expire
                    return status, stuck.peak, time.monotonic() - started
            status, peak, waited = asyncio.run(scenario())
        finally:
            crashing.stop()
            survivor.stop()
    assert status == 200
    assert peak == CAP
    # the engine still ran the crashed replica's requests (it never heard they were orphaned), so the survivor
    # was served only once their leases expired (ttl 1 s): not at once, and well before its queue timeout
    assert 0.5 < waited < 30
    _clean(redis_url, namespace)


@pytest.mark.asyncio
async def test_redis_down_falls_back_to_the_per_process_gate() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = RedisLink(f"redis://127.0.0.1:{port}/0", timeout_s=0.2, retry_s=30, max_connections=4)
    gate = Gate(2, max_queue=8)
    gate.shared = Leases(link, key=f"{KEY_PREFIX}:down:gpu", ttl_s=1.0, poll_s=0.01)
    try:
        assert [await gate.take_shared(prefer=False) for _ in range(3)] == [True, True, False]  # the local cap
        assert gate.shared.status() == {"leases_held": 0, "unleased": 2, "fallbacks": 2}
        gate.release()
        assert (gate.inflight, gate.shared.unleased) == (1, 1)
        gate.release()
        assert (gate.inflight, gate.shared.unleased) == (0, 0)
        assert link.status()["up"] is False
    finally:
        await gate.shared.aclose()
        await link.aclose()


@pytest.mark.asyncio
async def test_leases_are_counted_across_gates_and_handed_over_within_one(redis_url: str) -> None:
    namespace = "t" + uuid.uuid4().hex[:12]
    key = f"{KEY_PREFIX}:{namespace}:gpu"
    link = RedisLink(redis_url, timeout_s=2.0, retry_s=1.0, max_connections=4)
    a, b = Gate(2, max_queue=8), Gate(2, max_queue=8)  # two replicas' gates for one engine of 2
    a.shared = Leases(link, key=key, ttl_s=5.0, poll_s=0.01)
    b.shared = Leases(link, key=key, ttl_s=5.0, poll_s=0.01)
    try:
        assert [await a.take_shared(prefer=False), await b.take_shared(prefer=False)] == [True, True]
        assert await b.take_shared(prefer=False) is False  # b has a free local slot, the engine has none
        assert b.inflight == 1
        from labgate.routing.gate import Waiter

        waiter = Waiter(2, [b])
        b.shared.watch(b)
        a.release()  # a frees its lease; b's poller takes it for its waiter
        assert await asyncio.wait_for(waiter.future, 5) is b
        waiter.leave()
        assert (b.inflight, len(b.shared.held), await b.shared.live()) == (2, 2, 2)
        b.release()
        b.release()
        for _ in range(100):
            if await b.shared.live() == 0:
                break
            await asyncio.sleep(0.01)
        assert await b.shared.live() == 0
    finally:
        for gate in (a, b):
            assert gate.shared is not None
            await gate.shared.aclose()
        await link.aclose()


@pytest.mark.asyncio
async def test_prefer_local_under_counts_the_engine_across_replicas(redis_url: str) -> None:
    from labgate.server.serve import start_gateway
    from labgate.telemetry.logs import AccessLog
    from labgate.testing.gateway import config_from

    namespace = "t" + uuid.uuid4().hex[:12]
    async with Simulator(Behaviour(latency_s=1.0), models=["m"]) as local, \
            Simulator(Behaviour(), models=["m"]) as cloud:
        providers = {"local": {"type": "vllm", "base_url": local.url + "/v1", "models": ["m"],
                               "max_parallel_requests": 2},
                     "cloud": {"type": "openai_compatible", "base_url": cloud.url + "/v1", "models": ["m"]}}
        mappings = {"routing": {"prefer_local_under": 0.5,
                                "exact_matches": {"m": {"provider": "local", "fallback_chain": ["cloud"]}}}}
        gateway = {"state": {"url": redis_url, "timeout_s": 2.0}, "queue": {"namespace": namespace},
                   "store": {"capture": "none"}}
        running = await start_gateway(config_from(providers, mappings, gateway), host="127.0.0.1", port=0,
                                      access_log=AccessLog(enabled=False))
        try:
            link = RedisLink(redis_url, timeout_s=2.0, retry_s=1.0, max_connections=2)
            other = Leases(link, key=f"{KEY_PREFIX}:{namespace}:local", ttl_s=30, poll_s=0.05)
            assert await other.take(2)  # another replica holds one of the engine's two slots
            async with aiohttp.ClientSession() as http, http.post(running.url + "/v1/chat/completions",
                                 json={"model": "m", "messages": [{"role": "user", "content": "x"}]}) as r:
                assert r.status == 200
                assert r.headers["x-labgate-provider"] == "cloud"  # this replica has 0 in flight locally
                assert r.headers["x-labgate-spill"] == "local/m at or over prefer_local_under of 2 across replicas"
            other.give_back()
            await asyncio.gather(*other._tasks)
            await other.aclose()
            await link.aclose()
        finally:
            await running.stop(grace=2.0)
    _clean(redis_url, namespace)
