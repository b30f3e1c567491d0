"""``labgate cache``: stats, keys, watch and flush against a running gateway (its admin API)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from labgate.cli.cache import render_stats
from labgate.cli.main import main
from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import LoopThread, config_from

KEY = "sk-cli-cache-0123456789"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[RunningGateway, LoopThread]]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LABGATE_CLI_CACHE_KEY", KEY)
        with Simulator(Behaviour(tokens_per_s=0), models=["m"]).run_in_thread() as sim:
            config = config_from({"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}},
                                 {"routing": {"cache": {"m": {"namespace": "models"}}}},
                                 {"auth": {"master_key_env": "LABGATE_CLI_CACHE_KEY"}, "cache": {},
                                  "store": {"capture": "none"}, "logging": {"requests": False}})
            thread = LoopThread()
            running = thread.run(start_gateway(config, host="127.0.0.1", port=0))
            try:
                yield running, thread
            finally:
                thread.run(running.stop(grace=1))
                thread.close()


def _fill(running: RunningGateway, thread: LoopThread, n: int) -> None:
    import urllib.request

    for i in range(n):
        body = orjson.dumps({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": f"q{i}"}]})
        for _ in range(2):  # a miss, then a hit
            request = urllib.request.Request(running.url + "/v1/chat/completions", data=body, method="POST",
                                             headers={"authorization": f"Bearer {KEY}"})
            with urllib.request.urlopen(request, timeout=5) as r:
                assert r.status == 200
            cache = running.gateway.runtime.cache
            assert cache is not None
            thread.run(cache.drain())


def target(running: RunningGateway) -> list[str]:
    return ["--url", running.url, "--key-env", "LABGATE_CLI_CACHE_KEY"]


def test_stats_keys_and_flush(served: tuple[RunningGateway, LoopThread], capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    running, thread = served
    monkeypatch.setenv("LABGATE_CLI_CACHE_KEY", KEY)
    _fill(running, thread, 3)
    assert main(["cache", "stats", *target(running), "--json"]) == 0
    stats = orjson.loads(capsys.readouterr().out)
    models = stats["namespaces"]["models"]
    assert (models["entries"], models["hits"], models["misses"], models["hit_rate"]) == (3, 3, 3, 0.5)
    assert stats["backend"]["backend"] == "memory" and stats["total"]["entries"] == 3
    assert main(["cache", "stats", *target(running)]) == 0
    text = capsys.readouterr().out
    assert "memory backend, up" in text and "hit rate 50.0%" in text
    assert main(["cache", "keys", *target(running), "--namespace", "models", "--json"]) == 0
    keys = orjson.loads(capsys.readouterr().out)
    assert len(keys) == 3 and all(k["key"].startswith("labgate:models:") and k["ttl_s"] > 3000 for k in keys)
    assert main(["cache", "keys", *target(running), "--namespace", "default"]) == 0
    assert capsys.readouterr().out == "(0 keys)\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["cache", "flush", *target(running)]) == 1  # not a terminal and no --yes: refuses
    assert "--yes" in capsys.readouterr().err
    assert main(["cache", "flush", *target(running), "--namespace", "models", "--yes"]) == 0
    assert "flushed 3 entries" in capsys.readouterr().out
    assert main(["cache", "watch", *target(running), "--count", "2", "--interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert out.count("cache at ") == 2 and "models" in out


def test_errors_are_one_line_on_stderr(served: tuple[RunningGateway, LoopThread],
                                       capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    running, _ = served
    assert main(["cache", "stats", "--url", running.url, "--key-env", "LABGATE_NO_SUCH_KEY_VAR"]) == 1
    assert "answered 401" in capsys.readouterr().err
    assert main(["cache", "keys", *target(running), "--namespace", "bad:ns"]) == 1
    assert "answered 400" in capsys.readouterr().err
    assert main(["cache", "stats", "--url", "http://127.0.0.1:9"]) == 1
    assert "no gateway answers" in capsys.readouterr().err


def test_render_stats_marks_a_down_backend_and_lower_bounds() -> None:
    text = render_stats({"backend": {"backend": "redis", "up": False, "last_error": "ConnectionError: refused"},
                         "namespaces": {"dev": {"entries": 2, "bytes": 2048}}, "total": {"entries": 2, "bytes": 2048},
                         "truncated": True}, "redis://h:6379/0")
    assert "redis backend, DOWN (ConnectionError: refused)" in text
    assert "2.0 KiB" in text and "lower bounds" in text
