"""Rate limits and budgets on the real Redis: exact across replicas, one script call per request, outages.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); skips with the reason when Redis cannot be
reached (``LABGATE_REQUIRE_INTEGRATION=1`` turns the skip into a failure). Every test uses its own
key prefix. The outage test starts a throwaway ``redis-server`` of its own and stops that one only.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.state.base import Charge, StateUnavailableError
from labgate.state.counters import RedisCounters
from labgate.state.redis import RedisLink
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.integration


def counters(url: str, timeout_s: float = 2.0) -> RedisCounters:
    return RedisCounters(RedisLink(url, timeout_s=timeout_s, retry_s=0.2, max_connections=16), max_connections=16)


def prefix() -> str:
    return f"labgate:{{limits:t{uuid.uuid4().hex[:12]}}}:"


@pytest.mark.asyncio
async def test_three_replicas_admit_exactly_the_rpm_and_the_budget(redis_url: str) -> None:
    # exactness, not latency, is under test: 300 takes queue on 16 connections each, which on a loaded
    # machine can take longer than the 2 s a gateway allows before failing open
    replicas = [counters(redis_url, timeout_s=30.0) for _ in range(3)]
    p = prefix()
    rpm, cap = Charge(p + "rpm:global", "rate", 50, 60.0, 1), Charge(p + "spend:global:total:all", "cap", 40.0, 0, 1.0)
    started = time.monotonic()
    results = await asyncio.gather(*(replicas[i % 3].take((rpm,)) for i in range(300)))
    elapsed = time.monotonic() - started
    admitted = sum(r[0] == -1 for r in results)
    assert 50 <= admitted <= 50 + int(elapsed * 50 / 60)  # the burst, plus what refilled meanwhile
    assert all(r[1] > 0 for r in results if r[0] == 0)  # refusals say how long to wait
    results = await asyncio.gather(*(replicas[i % 3].take((cap,)) for i in range(300)))
    assert sum(r[0] == -1 for r in results) == 40
    # settling: 40 reservations of 1.0 each, real cost 0.5 each → 20.0 spent, 20 more fit
    await asyncio.gather(*(replicas[i % 3].adjust((cap,), (-0.5,)) for i in range(40)))
    assert await replicas[0].read((cap.key,)) == (pytest.approx(20.0),)
    results = await asyncio.gather(*(replicas[i % 3].take((cap,)) for i in range(100)))
    assert sum(r[0] == -1 for r in results) == 20
    for r in replicas:
        await r.link.client.delete(rpm.key, cap.key)
        await r.aclose()


@pytest.mark.asyncio
async def test_all_or_nothing_and_tpm_settlement(redis_url: str) -> None:
    c, p = counters(redis_url), prefix()
    a, b = Charge(p + "rpm:a", "rate", 1, 60.0, 1), Charge(p + "rpm:b", "rate", 5, 60.0, 1)
    assert (await c.take((a,)))[0] == -1
    assert (await c.take((b, a)))[0] == 1
    assert [(await c.take((b,)))[0] for _ in range(6)].count(-1) == 5  # b was not consumed by the refusal
    tpm = Charge(p + "tpm:k", "rate", 1000, 60.0, 600)
    assert (await c.take((tpm,)))[0] == -1 and (await c.take((tpm,)))[0] == 0
    await c.adjust((tpm,), (100 - 600,))
    assert (await c.take((tpm,)))[0] == -1
    ttl = await c.link.client.pttl(tpm.key)
    assert 0 < ttl <= 61_000  # idle limits expire by themselves
    await c.link.client.delete(a.key, b.key, tpm.key)
    await c.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A throwaway redis-server (never the shared one): (url, restart function)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (needed to stop and restart a Redis of our own)")
    pytest.importorskip("redis", reason="the redis client is not installed: pip install 'labgate[redis]'")
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no",
                                       "--dir", str(tmp_path)], stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop() -> None:
        proc = procs.pop()
        proc.terminate()
        proc.wait(10)

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", (start, stop)
    finally:
        while procs:
            stop()


@asynccontextmanager
async def gateway(sim: Simulator, url: str, limits: dict[str, Any], tmp_path: Path
                  ) -> AsyncIterator[tuple[RunningGateway, aiohttp.ClientSession]]:
    config = config_from({"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}},
                         gateway={"state": {"url": url, "timeout_s": 0.5, "retry_s": 0.2},
                                  "rate_limits": limits, "store": {"url": str(tmp_path / "h.db")},
                                  "logging": {"requests": False}})
    running = await start_gateway(config, host="127.0.0.1", port=0)
    try:
        async with aiohttp.ClientSession() as http:
            yield running, http
    finally:
        await running.stop(grace=1.0)


async def _post(running: RunningGateway, http: aiohttp.ClientSession) -> tuple[int, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(running.url + "/v1/chat/completions", json=body) as r:
        return r.status, orjson.loads(await r.read())


@pytest.mark.asyncio
@pytest.mark.timeout(180)  # a Redis stopped and started again: slow on a loaded machine, bounded by its steps
@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_stopped_mid_run(own_redis: tuple[str, Any], tmp_path: Path, mode: str) -> None:
    url, (start, stop) = own_redis
    limits = {"rpm": 3, "on_backend_error": mode, "namespace": "t" + uuid.uuid4().hex[:8]}
    async with Simulator(models=["m"]) as sim, gateway(sim, url, limits, tmp_path) as (running, http):
        assert [(await _post(running, http))[0] for _ in range(4)] == [200, 200, 200, 429]
        await asyncio.to_thread(stop)
        status, body = await _post(running, http)
        if mode == "open":
            assert status == 200  # served without limits while Redis is away (the default)
        else:
            assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")
        await asyncio.to_thread(start)  # an empty Redis: the counters start again
        await asyncio.sleep(0.3)  # past state.retry_s
        assert [(await _post(running, http))[0] for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.asyncio
async def test_a_dead_redis_raises_state_unavailable(own_redis: tuple[str, Any]) -> None:
    url, (_, stop) = own_redis
    c = counters(url, timeout_s=0.5)
    charge = Charge(prefix() + "rpm:x", "rate", 5, 60.0, 1)
    assert (await c.take((charge,)))[0] == -1
    await asyncio.to_thread(stop)
    with pytest.raises(StateUnavailableError):
        await c.take((charge,))
    await c.aclose()


@pytest.mark.asyncio
async def test_reads_beside_takes_never_exhaust_the_pool_into_a_false_outage(redis_url: str) -> None:
    """Budget alerts read the spend after each settle; past max_connections redis-py raises instead of
    waiting, and that error counted as "Redis is down": the limiter then served unlimited (fail open)."""
    c = RedisCounters(RedisLink(redis_url, timeout_s=5.0, retry_s=5.0, max_connections=2), max_connections=2)
    p = prefix()
    cap = Charge(p + "spend:global:total:all", "cap", 40.0, 0, 1.0)
    results = await asyncio.gather(*(c.take((cap,)) if i % 2 else c.read((cap.key,)) for i in range(200)))
    takes = [r for i, r in enumerate(results) if i % 2]
    assert sum(r[0] == -1 for r in takes) == 40  # exactly the budget, never "unavailable"
    assert (c.link.failures, c.link.down_until) == (0, 0.0)
    await c.link.client.delete(cap.key)
    await c.aclose()


@pytest.mark.asyncio
async def test_a_settlement_reads_the_budgets_back_in_the_same_script_call(redis_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Settling on Redis is one script call: the budgets' spend for the alerts comes back with it (no MGET)."""
    from labgate.cost import Prices
    from labgate.providers.base import Usage
    from labgate.record import RequestRecord
    from labgate.runtime import Runtime
    from labgate.state.budgets import window
    from labgate.state.limits import Limiter

    namespace = f"t{uuid.uuid4().hex[:12]}"
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                "models": [{"name": "m", "pricing": {"output_per_1m": 1_000_000}}]}},  # $1 a token
                         gateway={"rate_limits": {"namespace": namespace, "tpm": 10_000},
                                  "budgets": {"limits": [{"scope": "global", "limit_usd": 10, "period": "day"}]}})
    redis = counters(redis_url)
    calls: list[str] = []
    real_run = redis._run

    async def counted(script: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("take" if script is redis._take else "adjust")
        return await real_run(script, *args, **kwargs)

    async def no_read(keys: tuple[str, ...]) -> tuple[float, ...]:
        raise AssertionError("a settlement read the spend in a second call")

    monkeypatch.setattr(redis, "_run", counted)
    monkeypatch.setattr(redis, "read", no_read)
    limiter = Limiter(config, redis, Prices.from_config(config))
    rt = Runtime.build(config)
    try:
        record = RequestRecord("r", "chat")
        record.model, record.payload, record.body = "m", {"model": "m", "max_tokens": 3}, b"{}"
        await limiter.reserve(record, rt.table.resolve("m"), rt.table)
        record.usage, record.cost = Usage(0, 6), 6.0  # the estimate was $3; the answer cost $6: 60% of $10
        limiter.settle(record)
        await limiter.drain()
        assert calls == ["take", "adjust"]
        assert {k[1] for k in limiter.alerts.counts} == {0.5}  # the 50% threshold, seen from the read-back
        (value,) = await real_read(redis, (f"{limiter.prefix}spend:global:day:{window('day')[0]}",))
        assert value == pytest.approx(6.0)
    finally:
        keys = await redis.link.client.keys(f"labgate:{{limits:{namespace}}}:*")
        if keys:
            await redis.link.client.delete(*keys)
        await limiter.aclose()
        await rt.aclose()


async def real_read(redis: RedisCounters, keys: tuple[str, ...]) -> tuple[float, ...]:
    return await RedisCounters.read(redis, keys)
