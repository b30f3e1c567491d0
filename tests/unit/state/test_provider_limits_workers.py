"""``labgate serve --workers 2`` with no services: a provider's rpm is exact across the workers (shared SQLite)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from labgate.testing import Simulator

RPM, CONCURRENT = 10, 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        port, log = _free_port(), tmp_path / "serve.log"
        env = {**os.environ, "LABGATE_DATA_DIR": str(tmp_path / "data")}
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--config", str(config), "--port",
                                     str(port), "--workers", "2"], stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"

        async def scenario() -> tuple[list[tuple[int, str]], float]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENT)) as http:
                deadline = time.monotonic() + 60
                while True:
                    assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                    try:
                        async with http.get(url + "/health/liveness") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)

                async def one() -> tuple[int, str]:
                    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
                    async with http.post(url + "/v1/chat/completions", json=body) as r:
                        await r.read()
                        return r.status, r.headers.get("x-labgate-provider", "")
                started = time.monotonic()
                answers = await asyncio.gather(*(one() for _ in range(CONCURRENT)))
                return answers, time.monotonic() - started

        try:
            answers, elapsed = asyncio.run(scenario())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    assert [s for s, _ in answers] == [200] * CONCURRENT
    first = [p for _, p in answers].count("first")
    assert RPM <= first <= RPM + int(elapsed * RPM / 60), (first, elapsed)  # not RPM × 2 workers
    assert first + [p for _, p in answers].count("second") == CONCURRENT
