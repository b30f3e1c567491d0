"""``labgate keys``, ``labgate audit`` and ``labgate cost report`` on a history database filled by real requests."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import aiohttp
import orjson
import pytest

from labgate.cli.main import main
from labgate.server.serve import start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

PRICED = {"input_per_1m": 1_000_000, "output_per_1m": 2_000_000}  # $1 / $2 per token


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _traffic(db: Path, keys: dict[str, str]) -> list[float]:
    """Two requests per key (costs from the x-labgate-cost header), one with the master key's absence."""
    costs = []
    async with Simulator(models=["paid", "free"]) as sim, aiohttp.ClientSession() as http:
        providers = {"cloud": {"type": "openai_compatible", "base_url": sim.url + "/v1",
                               "models": [{"name": "paid", "pricing": PRICED}]},
                     "local": {"type": "ollama", "base_url": sim.url, "models": ["free"]}}
        config = config_from(providers, gateway={"store": {"url": str(db)}, "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            for model in ("paid", "free"):
                for key in keys.values():
                    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}]}
                    async with http.post(running.url + "/v1/chat/completions", json=body,
                                         headers={"authorization": f"Bearer {key}"}) as r:
                        assert r.status == 200
                        costs.append(float(r.headers["x-labgate-cost"]))
        finally:
            await running.stop(grace=1.0)
    return costs


def test_keys_then_cost_report_by_project_model_and_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "h.db")
    keys = {}
    for name, project in (("a", "red"), ("b", "blue")):
        code, out, err = run(capsys, "keys", "create", name, "--project", project, "--store", db, "--json")
        assert code == 0, err
        keys[name] = orjson.loads(out)["key"]
    code, out, _ = run(capsys, "keys", "list", "--store", db)
    assert code == 0 and "red" in out and keys["a"] not in out
    costs = asyncio.run(_traffic(Path(db), keys))
    assert costs[2:] == [0.0, 0.0] and all(c > 0 for c in costs[:2])

    code, out, _ = run(capsys, "cost", "report", "--by", "project", "--store", db, "--format", "json")
    rows = {r["project"]: r for r in orjson.loads(out)}
    assert code == 0 and set(rows) == {"red", "blue"}
    assert rows["red"]["cost_usd"] == pytest.approx(costs[0]) and rows["blue"]["cost_usd"] == pytest.approx(costs[1])
    assert rows["red"]["requests"] == 2 and rows["red"]["unpriced"] == 0
    code, out, _ = run(capsys, "cost", "report", "--by", "model", "--store", db, "--format", "csv")
    parsed = {r["model"]: r for r in csv.DictReader(io.StringIO(out))}
    assert float(parsed["paid"]["cost_usd"]) == pytest.approx(sum(costs)) and parsed["free"]["cost_usd"] == "0.0"
    code, out, _ = run(capsys, "cost", "report", "--by", "day", "--store", db)
    assert code == 0 and "TOTAL" in out and f"{sum(costs):.6f}" in out
    code, out, _ = run(capsys, "cost", "report", "--by", "key", "--since", "1h", "--store", db, "--format", "json")
    assert sum(r["cost_usd"] for r in orjson.loads(out)) == pytest.approx(sum(costs))

    code, out, err = run(capsys, "keys", "rotate", "a", "--store", db)
    assert code == 0 and out.strip().startswith("lg-") and out.strip() != keys["a"]
    code, out, _ = run(capsys, "audit", "--store", db, "--json")
    assert [e["action"] for e in orjson.loads(out)] == ["key.rotate", "key.create", "key.create"]
    code, _, err = run(capsys, "keys", "show", "nobody", "--store", db)
    assert code == 1 and "nobody" in err
