"""Adaptive allocation with a live gateway in front of the simulator: one variant is slower, the background task
re-weights the experiment from the history, the weights move towards the faster one (admin API, audit log, the
traffic itself); an experiment without `adaptive` starts no task."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from labgate.config.load import load_config
from labgate.config.reload import ConfigSource, load_files
from labgate.server.serve import RunningGateway, start_gateway
from labgate.store.schema import AUDIT_TABLE
from labgate.testing import Behaviour, Simulator

pytestmark = pytest.mark.asyncio
KEY = "sk-experiments-adaptive-0123456789"

EXPERIMENTS = """
experiments:
  - name: speed
    status: running
    model: chat
    unit: request
    variants:
      - {name: fast, model: fast, weight: 50}
      - {name: slow, model: sim/slow, weight: 50}
    metrics: [latency_p95]
    adaptive: {enabled: %s, interval_s: 1, settle_s: 0.3, min_samples: 20, min_share: 0.1}
"""


def write_config(directory: Path, sim: Simulator, adaptive: bool) -> Path:
    (directory / "providers.yaml").write_text(
        f"providers:\n  sim:\n    type: openai_compatible\n    base_url: {sim.url}/v1\n    models: [fast, slow]\n")
    (directory / "model-mappings.yaml").write_text("routing:\n  aliases: {chat: fast}\n")
    (directory / "gateway.yaml").write_text(
        "auth: {master_key_env: LABGATE_EXPERIMENTS_KEY}\nlogging: {requests: false}\n"
        f"store: {{url: {directory / 'history.db'}, capture: metadata}}\n")
    (directory / "experiments.yaml").write_text(EXPERIMENTS % ("true" if adaptive else "false"))
    return directory


async def start(directory: Path) -> RunningGateway:
    return await start_gateway(load_config(directory), host="127.0.0.1", port=0,
                               source=ConfigSource(path=directory), loaded=load_files(directory))


async def traffic(http: aiohttp.ClientSession, url: str, n: int) -> list[str]:
    gate = asyncio.Semaphore(6)

    async def one() -> str:
        async with gate, http.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                                   json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]}) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
            return resp.headers["x-labgate-experiment"]

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_weights_move_towards_the_faster_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_EXPERIMENTS_KEY", KEY)
    async with Simulator(models=["fast", "slow"], per_model={"fast": Behaviour(latency_s=0.01),
                                                             "slow": Behaviour(latency_s=0.05)}) as sim:
        running = await start(write_config(tmp_path, sim, adaptive=True))
        url, admin = f"http://127.0.0.1:{running.port}", {"authorization": f"Bearer {KEY}"}
        try:
            async with aiohttp.ClientSession() as http:
                first = await traffic(http, url, 120)  # burn-in at the configured 50/50
                assert 20 <= first.count("speed/slow") <= 100
                deadline, weights = time.monotonic() + 60, {}
                while time.monotonic() < deadline:  # re-weighted within a few epochs of 1 s
                    await running.gateway.history.flush()  # type: ignore[union-attr]
                    async with http.get(url + "/admin/experiments/speed", headers=admin) as resp:
                        shown = await resp.json()
                    weights = shown["weights"]
                    if weights["fast"] >= 0.8:
                        break
                    await traffic(http, url, 20)
                    await asyncio.sleep(0.3)
                assert weights["fast"] >= 0.8, shown
                allocation = shown["allocation"]
                assert allocation["state"] in ("adaptive", "stopped") and allocation["best"] == "fast"
                later = await traffic(http, url, 200)
                assert later.count("speed/fast") >= 140  # the traffic follows (≥ 0.8 expected 160+)
                rows = await running.gateway.history.store.fetch(  # type: ignore[union-attr]
                    f"SELECT actor, action, target FROM {AUDIT_TABLE} WHERE action = 'experiment.reweight'")
                assert rows and all(r["target"] == "speed" and r["actor"].startswith("labgate:adaptive")
                                    for r in rows)
        finally:
            await running.stop()


async def test_off_by_default_starts_no_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_EXPERIMENTS_KEY", KEY)
    async with Simulator(models=["fast", "slow"]) as sim:
        running = await start(write_config(tmp_path, sim, adaptive=False))
        try:
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert "labgate-experiments-adaptive" not in names
            live = running.gateway.runtime.experiments
            assert live is not None and live.experiments[0].weights is None  # the configured weights
        finally:
            await running.stop()
