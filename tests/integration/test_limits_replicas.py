"""The proof: three ``labgate serve`` processes on one Redis and one PostgreSQL, 300 concurrent requests.

A budget that fits exactly 40 requests (each is estimated and costs $5: input is free, the answer
is 5 tokens at $1 and ``max_tokens`` is 5) and an rpm limit of 50 on another model. Accepted
requests equal the limits, the spend never passes the budget, and the history's cost sum (in
PostgreSQL) equals the budget counter (in Redis).

Needs ``REDIS_URL`` and ``DATABASE_URL`` (defaults: the machine's); skips with the reason when
either is unreachable (``LABGATE_REQUIRE_INTEGRATION=1`` turns that into a failure).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from labgate.testing import Behaviour, Simulator

pytestmark = pytest.mark.integration
BUDGET_USD, COST_USD, RPM, CONCURRENT = 200.0, 5.0, 50, 300



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with Simulator(Behaviour(completion_tokens=5), models=["paid", "free"]).run_in_thread() as sim:
        yield sim


def _config(tmp_path: Path, sim: Simulator, redis_url: str, pg_url: str, namespace: str) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    providers = {"providers": {"cloud": {
        "type": "openai_compatible", "base_url": sim.url + "/v1",
        "models": [{"name": "paid", "pricing": {"input_per_1m": 0, "output_per_1m": 1_000_000}},
                   {"name": "free", "pricing": {"input_per_1m": 0, "output_per_1m": 0}}]}}}
    gateway = {"state": {"url": redis_url, "timeout_s": 2.0},
               "store": {"url": pg_url, "capture": "metadata"},
               "logging": {"requests": False},
               "rate_limits": {"namespace": namespace, "models": {"free": {"rpm": RPM}}},
               "budgets": {"limits": [{"scope": "model", "name": "paid", "limit_usd": BUDGET_USD,
                                       "period": "total"}]}}
    (directory / "providers.yaml").write_text(yaml.safe_dump(providers))
    (directory / "gateway.yaml").write_text(yaml.safe_dump(gateway))
    (directory / "model-mappings.yaml").write_text("routing: {}\n")
    return directory


def _serve(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--config", str(config),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def _wait_ready(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the gateway exited: {_tail(log)}"
        try:
            async with http.get(url + "/health/liveness") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the gateway did not start: {_tail(log)}")


async def _burst(http: aiohttp.ClientSession, urls: list[str], model: str) -> list[tuple[int, float | None]]:
    async def one(i: int) -> tuple[int, float | None]:
        body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}
        async with http.post(urls[i % len(urls)] + "/v1/chat/completions", json=body) as r:
            await r.read()
            cost = r.headers.get("x-labgate-cost")
            return r.status, float(cost) if cost is not None else None
    return await asyncio.gather(*(one(i) for i in range(CONCURRENT)))


def test_three_gateways_on_redis_and_postgres(tmp_path: Path, simulator: Simulator, redis_url: str,
                                             pg_url: str) -> None:
    import asyncpg
    import redis

    namespace = "t" + uuid.uuid4().hex[:12]
    config = _config(tmp_path, simulator, redis_url, pg_url, namespace)
    ports = [_free_port() for _ in range(3)]
    logs = [tmp_path / f"gateway{i}.log" for i in range(3)]
    procs = [_serve(config, port, log) for port, log in zip(ports, logs, strict=True)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]

    async def scenario() -> tuple[list[tuple[int, float | None]], list[tuple[int, float | None]], float]:
        connector = aiohttp.TCPConnector(limit=CONCURRENT)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
            for url, proc, log in zip(urls, procs, logs, strict=True):
                await _wait_ready(http, url, proc, log)
            paid = await _burst(http, urls, "paid")
            started = time.monotonic()
            free = await _burst(http, urls, "free")
            return paid, free, time.monotonic() - started

    try:
        paid, free, elapsed = asyncio.run(scenario())
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)  # a clean stop writes the history still queued

    statuses = [s for s, _ in paid]
    assert statuses.count(200) == BUDGET_USD / COST_USD, statuses  # exactly 40
    assert set(statuses) == {200, 429}
    spent = sum(c for s, c in paid if s == 200 and c is not None)
    assert spent == pytest.approx(BUDGET_USD)
    admitted = [s for s, _ in free].count(200)
    assert RPM <= admitted <= RPM + int(elapsed * RPM / 60), (admitted, elapsed)

    client = redis.Redis.from_url(redis_url)
    try:
        counted = float(client.get(f"labgate:{{limits:{namespace}}}:spend:model:paid:total:all") or 0)
        client.delete(*client.keys(f"labgate:{{limits:{namespace}}}:*"))
    finally:
        client.close()

    async def history() -> tuple[int, float]:
        conn = await asyncpg.connect(pg_url.split("?")[0], server_settings={
            "search_path": pg_url.split("search_path=")[1]})
        try:
            row = await conn.fetchrow("SELECT count(*) AS n, coalesce(sum(cost), 0) AS cost FROM requests "
                                      "WHERE model = 'paid' AND status = 200")
            return int(row["n"]), float(row["cost"])
        finally:
            await conn.close()

    rows, recorded = asyncio.run(history())
    assert rows == 40
    assert recorded == pytest.approx(counted) == pytest.approx(BUDGET_USD)
