"""``serve --workers 2``: every scrape answers with the whole process group's counts."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import yaml

from labgate.testing import Behaviour, Simulator
from labgate.testing.process import labgate
from labgate.testing.prometheus import parse_metrics

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}


@contextmanager
def serve(config: Path, *args: str) -> Iterator[str]:
    """``labgate serve --config DIR --port 0 ARGS``; yields its URL; it must exit 0 on SIGTERM."""
    with labgate("serve", "--config", str(config), "--port", "0", *args, stop_timeout_s=15) as gw:
        yield gw.url
        assert gw.stop() == 0


def post(url: str) -> int:
    request = urllib.request.Request(url + "/v1/chat/completions", data=orjson.dumps(CHAT),
                                     headers={"content-type": "application/json", "connection": "close"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status


def scrape(url: str) -> dict[str, float]:
    request = urllib.request.Request(url + "/metrics", headers={"connection": "close"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        families = parse_metrics(resp.read().decode())
    return {key: value for family in families.values() for key, value in family.samples.items()}


@pytest.fixture
def config_dir(tmp_path: Path) -> Iterator[Path]:
    with Simulator(models=["m1"]).run_in_thread() as sim:
        (tmp_path / "providers.yaml").write_text(
            f"providers:\n  sim:\n    type: openai_compatible\n    base_url: {sim.url}/v1\n    models: [m1]\n")
        (tmp_path / "gateway.yaml").write_text("logging:\n  requests: false\n")
        yield tmp_path


def test_every_scrape_of_two_workers_reports_every_request(config_dir: Path) -> None:
    n = 40
    key = 'labgate_requests_total{endpoint="chat",model="m1",provider="sim",status="200"}'
    with serve(config_dir, "--workers", "2") as url:
        wait_for_workers(url, 2)
        assert [post(url) for _ in range(n)] == [200] * n  # a new connection each: both workers serve
        scrapes = [scrape(url) for _ in range(6)]  # a new connection each: both workers answer some
    for samples in scrapes:
        assert samples[key] == n
        assert samples['labgate_request_duration_seconds_count{endpoint="chat",model="m1",provider="sim"}'] == n
        assert samples["labgate_metrics_workers"] == 2
        assert samples["labgate_metrics_workers_missing"] == 0
        assert samples['labgate_build_info{version="' + samples_version(samples) + '"}'] == 1


def wait_for_workers(url: str, workers: int) -> None:
    """Both workers have started (the parent's banner comes before they have)."""
    deadline = time.monotonic() + 20
    while (samples := scrape(url))["labgate_metrics_workers_missing"] > 0:
        assert samples["labgate_metrics_workers"] + samples["labgate_metrics_workers_missing"] == workers
        assert time.monotonic() < deadline, samples
        time.sleep(0.05)


def samples_version(samples: dict[str, float]) -> str:
    (key,) = [k for k in samples if k.startswith("labgate_build_info")]
    return key.split('"')[1]


def test_one_worker_has_no_group(config_dir: Path) -> None:
    with serve(config_dir) as url:
        assert post(url) == 200
        samples = scrape(url)
    assert samples['labgate_requests_total{endpoint="chat",model="m1",provider="sim",status="200"}'] == 1
    assert "labgate_metrics_workers" not in samples


BUDGET = 'labgate_budget_{}{{budget="model:m1",scope="model",period="day"}}'


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def test_budget_gauges_of_two_workers_are_not_summed(tmp_path: Path, request: pytest.FixtureRequest,
                                                     backend: str) -> None:
    """The workers share one budget counter (the SQLite file the parent makes, or Redis): every scrape,
    whichever worker answers it, reports the spend and limit once, not once per worker."""
    n, limit = 12, 100.0  # the estimate (no max_tokens: 1,024 tokens, $1.02) must fit
    cost = 6 * 1000 / 1e6  # 6 completion tokens at $1,000 per 1M
    # a history of its own: budgets are seeded from the history's cost of the day (state/seed.py)
    gateway = {"logging": {"requests": False}, "store": {"url": str(tmp_path / "history.db")},
               "budgets": {"limits": [{"scope": "model", "name": "m1", "limit_usd": limit, "period": "day"}]}}
    if backend == "redis":
        gateway["rate_limits"] = {"url": request.getfixturevalue("redis_url"),
                                  "namespace": "budget-metrics-" + uuid.uuid4().hex[:8]}
    with Simulator(Behaviour(completion_tokens=6), models=["m1"]).run_in_thread() as sim:
        (tmp_path / "providers.yaml").write_text(yaml.safe_dump({"providers": {"sim": {
            "type": "openai_compatible", "base_url": sim.url + "/v1",
            "models": [{"name": "m1", "pricing": {"input_per_1m": 0, "output_per_1m": 1000}}]}}}))
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(gateway))
        with serve(tmp_path, "--workers", "2") as url:
            wait_for_workers(url, 2)
            assert [post(url) for _ in range(n)] == [200] * n
            deadline = time.monotonic() + 10  # a settle lands just after the answer
            while (first := scrape(url)).get(BUDGET.format("spend_usd"), 0) < n * cost - 1e-9:
                assert time.monotonic() < deadline, first
                time.sleep(0.05)
            scrapes = [first, *(scrape(url) for _ in range(6))]  # a new connection each: both workers answer
    end = (int(time.time()) // 86400 + 1) * 86400
    for samples in scrapes:
        assert samples[BUDGET.format("spend_usd")] == pytest.approx(n * cost)
        assert samples[BUDGET.format("limit_usd")] == limit
        assert samples[BUDGET.format("window_end_seconds")] in (end, end + 86400)  # a scrape at midnight
        assert samples["labgate_budget_read_errors_total"] == 0  # both workers' counters, summed
        assert samples['labgate_requests_total{endpoint="chat",model="m1",provider="sim",status="200"}'] == n
