"""``labgate load`` and ``labgate compare-providers`` against a gateway in front of the simulator."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from labgate.cli.load import knee
from labgate.cli.main import main
from labgate.server.serve import start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator, Status
from labgate.testing.counting import CountingSimulator
from labgate.testing.gateway import LoopThread, config_from


class Sink:
    def write(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass


GOOD: list[CountingSimulator] = []  # the fast upstream, so a test can read how many requests it served at once


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    # 20 ms per request: one client does at most ~50 req/s, four do ~4x that
    with CountingSimulator(Behaviour(latency_s=0.02, completion_tokens=6), models=["m1"]).run_in_thread() as good, \
            Simulator(Behaviour(ttft_s=0.03, tokens_per_s=500, completion_tokens=12), models=["m1"]).run_in_thread() \
            as slow, Simulator(Behaviour(fault=Status(503)), models=["m1"]).run_in_thread() as bad:
        config = config_from(
            {name: {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1"]}
             for name, sim in (("good", good), ("slow", slow), ("bad", bad))})
        thread = LoopThread()
        running = thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(Sink())))
        GOOD[:] = [good]
        try:
            yield f"http://127.0.0.1:{running.port}"
        finally:
            thread.run(running.stop(grace=1.0))
            thread.close()


def test_the_knee_is_the_lowest_level_near_the_best_throughput() -> None:
    levels = [{"concurrency": 1, "req_per_s": 50.0}, {"concurrency": 4, "req_per_s": 190.0},
              {"concurrency": 16, "req_per_s": 200.0}, {"concurrency": 64, "req_per_s": 195.0}]
    assert knee(levels) == 4
    assert knee([{"concurrency": 1, "req_per_s": 0.0}]) is None


def test_load_measures_each_level(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    GOOD[0].peak = 0
    assert main(["load", "--url", url, "--model", "good/m1", "--concurrency", "1,4", "--duration", "1",
                 "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    one, four = result["levels"]
    assert (one["concurrency"], four["concurrency"], one["errors"], four["errors"]) == (1, 4, 0, 0)
    assert 0 < one["req_per_s"] <= 50  # 20 ms a request, one at a time: at most 50 a second
    # four at a time: seen at the upstream (a throughput comparison depends on the machine's load)
    assert GOOD[0].peak >= 2
    assert one["p50_ms"] >= 20 and one["p50_ms"] <= one["p95_ms"] <= one["p99_ms"]
    assert result["knee"] == knee(result["levels"])


def test_load_counts_errors_by_cause_and_prints_a_table(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", "--url", url, "--model", "bad/m1", "--concurrency", "2", "--duration", "0.3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["concurrency", "req/s", "p50", "ms", "p95", "ms", "p99", "ms", "errors"]
    assert out.splitlines()[1].split()[:5] == ["2", "0.0", "-", "-", "-"]
    assert main(["load", "--url", url, "--concurrency", "0"]) == 1


def test_compare_providers_shows_latency_first_token_and_tokens_per_second(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare-providers", "--url", url, "--models", "good/m1,slow/m1,bad/m1", "--requests", "2",
                 "--json"]) == 0
    good, slow, bad = orjson.loads(capsys.readouterr().out)
    assert (good["ok"], slow["ok"], bad["ok"]) == (2, 2, 0)
    assert slow["p50_first_token_ms"] >= 30 and slow["p50_tokens_per_s"] > 0
    assert good["deployments"] == ["good/m1"] and slow["deployments"] == ["slow/m1"]
    assert bad["errors"] and "503" in bad["errors"][0]
