"""End to end: experiments.yaml → a real gateway in front of the simulator (one variant slower) → the history →
``labgate experiment analyze`` names the slower variant with its interval; admin routes, feedback, metrics, pause."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from labgate.cli.main import main
from labgate.config.load import load_config
from labgate.config.reload import ConfigSource, load_files
from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Behaviour, Simulator

pytestmark = pytest.mark.asyncio
KEY = "sk-experiments-e2e-0123456789"
SESSIONS = 160

EXPERIMENTS = """
experiments:
  - name: speed   # which engine answers faster
    status: running
    model: chat
    unit: header:x-session-id
    variants:
      - name: fast
        model: fast
        weight: 50
      - name: slow
        model: sim/slow
        weight: 50
    metrics: [latency_p95, thumbs_up_rate]
"""


def write_config(directory: Path, sim: Simulator) -> Path:
    """The config directory; its history database in it."""
    (directory / "providers.yaml").write_text(
        f"providers:\n  sim:\n    type: openai_compatible\n    base_url: {sim.url}/v1\n    models: [fast, slow]\n")
    (directory / "model-mappings.yaml").write_text("routing:\n  aliases: {chat: fast}\n")
    (directory / "gateway.yaml").write_text(
        "auth: {master_key_env: LABGATE_EXPERIMENTS_KEY}\nlogging: {requests: false}\n"
        f"store: {{url: {directory / 'history.db'}, capture: metadata}}\n")
    (directory / "experiments.yaml").write_text(EXPERIMENTS)
    return directory


async def start(directory: Path) -> RunningGateway:
    return await start_gateway(load_config(directory), host="127.0.0.1", port=0,
                               source=ConfigSource(path=directory), loaded=load_files(directory))


async def chat(http: aiohttp.ClientSession, url: str, session: str | None, extra: dict[str, str] | None = None
               ) -> tuple[str | None, str]:
    headers = {"authorization": f"Bearer {KEY}", **({"x-session-id": session} if session else {}), **(extra or {})}
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        return resp.headers.get("x-labgate-experiment"), resp.headers["x-request-id"]


async def cli(argv: list[str]) -> int:
    """``labgate …`` as the user runs it (its own event loop: a thread of its own here)."""
    return await asyncio.to_thread(main, argv)


async def test_experiment_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LABGATE_EXPERIMENTS_KEY", KEY)
    async with Simulator(models=["fast", "slow"], per_model={"fast": Behaviour(latency_s=0.02),
                                                             "slow": Behaviour(latency_s=0.06)}) as sim:
        directory = write_config(tmp_path, sim)
        (tmp_path / "twin").mkdir()
        # two gateways on the same experiments (their own history files, so the counts below are exact)
        running, twin = await start(directory), await start(write_config(tmp_path / "twin", sim))
        url, twin_url = f"http://127.0.0.1:{running.port}", f"http://127.0.0.1:{twin.port}"
        try:
            async with aiohttp.ClientSession() as http:
                gate = asyncio.Semaphore(8)

                async def one(i: int) -> tuple[str | None, str]:
                    async with gate:
                        return await chat(http, url, f"s{i}")

                answers = await asyncio.gather(*(one(i) for i in range(SESSIONS)))
                labels = [label for label, _ in answers]
                assert set(labels) == {"speed/fast", "speed/slow"}
                assert 40 <= labels.count("speed/slow") <= 120  # 50/50 of 160 (p of a miss ~1e-10)
                for i in range(0, SESSIONS, 16):  # sticky: the same session, the same variant, on either gateway
                    assert (await chat(http, twin_url, f"s{i}"))[0] == labels[i]
                assert (await chat(http, url, "s1", {"x-labgate-experiment": "off"}))[0] is None  # opted out
                # thumbs on the fast variant's answers mostly up, on the slow one's mostly down
                for n, (label, rid) in enumerate(answers[:60]):
                    thumbs = "up" if (label == "speed/fast") == (n % 5 != 0) else "down"
                    async with http.post(url + "/v1/feedback", json={"request_id": rid, "thumbs": thumbs},
                                         headers={"authorization": f"Bearer {KEY}"}) as resp:
                        assert resp.status == 201, await resp.text()
                # one comparison: a fast and a slow answer side by side, the fast one preferred
                fast = next(rid for label, rid in answers[60:] if label == "speed/fast")
                slow = next(rid for label, rid in answers[60:] if label == "speed/slow")
                for vote in ({"request_id": fast, "comparison_id": "cmp_e2e", "preferred": True},
                             {"request_id": slow, "comparison_id": "cmp_e2e", "thumbs": "down"}):
                    async with http.post(url + "/v1/feedback", json=vote,
                                         headers={"authorization": f"Bearer {KEY}"}) as resp:
                        assert resp.status == 201, await resp.text()
                await running.gateway.history.flush()  # type: ignore[union-attr]

                admin = {"authorization": f"Bearer {KEY}"}
                async with http.get(url + "/admin/experiments/speed/analysis") as resp:
                    assert resp.status == 401  # master key only
                async with http.get(url + "/admin/experiments", headers=admin) as resp:
                    listed = (await resp.json())["data"]
                assert [(e["name"], e["taking_traffic"], sum(e["requests"].values())) for e in listed] == [
                    ("speed", True, SESSIONS)]  # the opted-out request is not the experiment's
                async with http.get(url + "/admin/experiments/speed/analysis", headers=admin) as resp:
                    report: dict[str, Any] = await resp.json()
                latency = next(c for c in report["comparisons"] if c["metric"] == "latency")
                assert latency["variant"] == "slow" and latency["decided"] and latency["difference"] > 0.5
                assert latency["confidence_sequence"][0] > 0  # slower for sure, at any time we had looked
                async with http.get(url + "/admin/experiments/nope/analysis", headers=admin) as resp:
                    assert resp.status == 404 and "x-request-id" in resp.headers
                async with http.get(url + "/metrics") as resp:
                    metrics = await resp.text()
                assert 'labgate_experiment_request_duration_seconds_count{experiment="speed",variant="slow"}' \
                    in metrics

                async with http.post(url + "/admin/experiments/speed/pause", headers=admin) as resp:
                    paused = await resp.json()
                assert (resp.status, paused["was"], paused["status"], paused["reload"]["status"]) == (
                    200, "running", "paused", "applied")
                assert "status: paused" in (directory / "experiments.yaml").read_text()
                assert "# which engine answers faster" in (directory / "experiments.yaml").read_text()  # kept
                assert running.gateway.runtime.experiments is None
                assert (await chat(http, url, "s3"))[0] is None  # paused: plain routing
        finally:
            await twin.stop(grace=2.0)
            await running.stop(grace=2.0)

    assert await cli(["experiment", "analyze", "speed", "--config", str(directory)]) == 0
    out = capsys.readouterr().out
    verdict = next(line for line in out.splitlines() if line.startswith("slow slower by"))
    assert "95% CS" in verdict and "verdict: slow slower by" in out
    assert await cli(["experiment", "export", "speed", "--config", str(directory), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    latency_row = next(r for r in rows if r["metric"] == "latency")
    assert latency_row["variant"] == "slow" and latency_row["decided"] == "True"
    thumbs = next(r for r in rows if r["metric"] == "thumbs_up_rate")
    assert int(thumbs["n_control"]) + int(thumbs["n_variant"]) == 61
    preference = next(r for r in rows if r["metric"] == "preference_rate")
    assert [preference[k] for k in ("n_control", "n_variant", "value_control", "value_variant")] == [
        "1", "1", "1.0", "0.0"]
    assert await cli(["experiment", "list", "--config", str(directory)]) == 0
    assert "speed" in capsys.readouterr().out and "paused" in (directory / "experiments.yaml").read_text()
    assert await cli(["experiment", "start", "speed", "--config", str(directory), "--offline"]) == 0
    assert "status: running" in (directory / "experiments.yaml").read_text()
    assert await cli(["experiment", "analyze", "speeed", "--config", str(directory)]) == 1
    assert "did you mean `speed`" in capsys.readouterr().err
