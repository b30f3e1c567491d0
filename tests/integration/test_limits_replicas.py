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
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from labgate.testing import Behaviour, Simulator
from labgate.testing.process import Fleet

pytestmark = pytest.mark.integration
BUDGET_USD, COST_USD, RPM, CONCURRENT = 200.0, 5.0, 50, 300


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


async def _burst(clients: list[openai.AsyncOpenAI], model: str) -> list[tuple[int, float | None]]:
    """CONCURRENT chat requests at once, spread over the gateways with the official SDK (no retries: a 429
    must be seen, not retried); each answer's status and ``x-labgate-cost``."""
    async def one(i: int) -> tuple[int, float | None]:
        try:
            raw = await clients[i % len(clients)].chat.completions.with_raw_response.create(
                model=model, max_tokens=5, messages=[{"role": "user", "content": "hello"}])
        except openai.APIStatusError as exc:
            return exc.status_code, None
        cost = raw.headers.get("x-labgate-cost")
        return raw.status_code, float(cost) if cost is not None else None
    return await asyncio.gather(*(one(i) for i in range(CONCURRENT)))


def test_three_gateways_on_redis_and_postgres(tmp_path: Path, simulator: Simulator, redis_url: str,
                                             pg_url: str) -> None:
    import asyncpg
    import redis

    namespace = "t" + uuid.uuid4().hex[:12]
    config = _config(tmp_path, simulator, redis_url, pg_url, namespace)
    fleet = Fleet.start([config] * 3, [tmp_path / f"gateway{i}.log" for i in range(3)])

    async def scenario() -> tuple[list[tuple[int, float | None]], list[tuple[int, float | None]], float]:
        limits = httpx.Limits(max_connections=CONCURRENT)
        clients = [openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120,
                                      http_client=httpx.AsyncClient(limits=limits)) for url in fleet.urls]
        try:
            paid = await _burst(clients, "paid")
            started = time.monotonic()
            free = await _burst(clients, "free")
            return paid, free, time.monotonic() - started
        finally:
            for client in clients:
                await client.close()

    try:
        fleet.wait_live(60)
        paid, free, elapsed = asyncio.run(scenario())
    finally:
        fleet.stop(60)  # a clean stop writes the history still queued

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
