"""``labgate serve --workers 2`` with no services: a provider's rpm is exact across the workers (shared SQLite)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import yaml

from labgate.testing import Simulator
from labgate.testing.process import free_port, serve_logged, stop, wait_live

RPM, CONCURRENT = 10, 60


def test_two_workers_share_a_provider_rpm(tmp_path: Path) -> None:
    with Simulator(models=["m"]).run_in_thread() as a, Simulator(models=["m"]).run_in_thread() as b:
        config = tmp_path / "config"
        config.mkdir()
        (config / "providers.yaml").write_text(yaml.safe_dump({"providers": {
            "first": {"type": "openai_compatible", "base_url": a.url + "/v1", "models": ["m"], "priority": 1,
                      "rate_limits": {"rpm": RPM}},
            "second": {"type": "openai_compatible", "base_url": b.url + "/v1", "models": ["m"], "priority": 2}}}))
        (config / "gateway.yaml").write_text(yaml.safe_dump({
            "store": {"url": str(tmp_path / "h.db")}, "logging": {"requests": False}}))
        (config / "model-mappings.yaml").write_text("routing: {}\n")
        port, log = free_port(), tmp_path / "serve.log"
        env = {**os.environ, "LABGATE_DATA_DIR": str(tmp_path / "data")}
        proc = serve_logged(config, port, log, "--workers", "2", env=env)
        url = f"http://127.0.0.1:{port}"

        async def scenario() -> tuple[list[tuple[int, str]], float]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENT)) as http:

                async def one() -> tuple[int, str]:
                    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
                    async with http.post(url + "/v1/chat/completions", json=body) as r:
                        await r.read()
                        return r.status, r.headers.get("x-labgate-provider", "")
                started = time.monotonic()
                answers = await asyncio.gather(*(one() for _ in range(CONCURRENT)))
                return answers, time.monotonic() - started

        try:
            wait_live(url, proc, log)
            answers, elapsed = asyncio.run(scenario())
        finally:
            stop((proc,), 60)
    assert [s for s, _ in answers] == [200] * CONCURRENT
    first = [p for _, p in answers].count("first")
    assert RPM <= first <= RPM + int(elapsed * RPM / 60), (first, elapsed)  # not RPM × 2 workers
    assert first + [p for _, p in answers].count("second") == CONCURRENT
