"""``labgate serve --workers 2`` with no services: limits and budgets are exact across the workers.

The workers share their counters in a SQLite file (state/counters.py: SQLiteCounters); 300
concurrent requests against a budget that fits exactly 40 (each request is estimated and costs $5)
and an rpm limit of 50 on another model.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from labgate.testing import Behaviour, Simulator
from labgate.testing.process import free_port, serve_logged, stop, wait_live

BUDGET_USD, COST_USD, RPM, CONCURRENT = 200.0, 5.0, 50, 300


async def _burst(http: aiohttp.ClientSession, url: str, model: str) -> list[tuple[int, str | None]]:
    async def one() -> tuple[int, str | None]:
        body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}
        async with http.post(url + "/v1/chat/completions", json=body) as r:
            await r.read()
            return r.status, r.headers.get("x-labgate-cost")
    return await asyncio.gather(*(one() for _ in range(CONCURRENT)))


def test_two_workers_share_exact_limits(tmp_path: Path) -> None:
    with Simulator(Behaviour(completion_tokens=5), models=["paid", "free"]).run_in_thread() as sim:
        config = tmp_path / "config"
        config.mkdir()
        (config / "providers.yaml").write_text(yaml.safe_dump({"providers": {"cloud": {
            "type": "openai_compatible", "base_url": sim.url + "/v1",
            "models": [{"name": "paid", "pricing": {"output_per_1m": 1_000_000}},
                       {"name": "free", "pricing": {"output_per_1m": 0}}]}}}))
        (config / "gateway.yaml").write_text(yaml.safe_dump({
            "store": {"url": str(tmp_path / "h.db")}, "logging": {"requests": False},
            "rate_limits": {"models": {"free": {"rpm": RPM}}},
            "budgets": {"limits": [{"scope": "model", "name": "paid", "limit_usd": BUDGET_USD, "period": "day"}]}}))
        (config / "model-mappings.yaml").write_text("routing: {}\n")
        port, log = free_port(), tmp_path / "serve.log"
        env = {**os.environ, "LABGATE_DATA_DIR": str(tmp_path / "data")}
        proc = serve_logged(config, port, log, "--workers", "2", env=env)
        url = f"http://127.0.0.1:{port}"

        async def scenario() -> tuple[list[tuple[int, str | None]], list[tuple[int, str | None]], float]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENT)) as http:
                paid = await _burst(http, url, "paid")
                started = time.monotonic()
                free = await _burst(http, url, "free")
                return paid, free, time.monotonic() - started

        try:
            wait_live(url, proc, log)
            paid, free, elapsed = asyncio.run(scenario())
            shared = list((tmp_path / "data").glob("limits-*.db"))
        finally:
            stop((proc,), 60)
    assert len(shared) == 1  # the workers' shared counters (removed when the server stops)
    assert not list((tmp_path / "data").glob("limits-*.db"))
    statuses = [s for s, _ in paid]
    assert statuses.count(200) == BUDGET_USD / COST_USD, statuses
    assert sum(float(c) for s, c in paid if s == 200 and c is not None) == pytest.approx(BUDGET_USD)
    admitted = [s for s, _ in free].count(200)
    assert RPM <= admitted <= RPM + int(elapsed * RPM / 60), (admitted, elapsed)
