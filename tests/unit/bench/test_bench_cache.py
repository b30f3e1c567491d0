"""``bench/cache.py --quick`` as CI smoke: every mode runs and every ratio is printed (never judged on time)."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"

RATIOS = ("cache off (no cache: section) vs today, req/s ×", "memory hit vs proxied miss, req/s ×",
          "Redis hit: gateway CPU added over a memory hit, µs/req",
          "memory hit: p50 added over the gateway's floor (c=1), ms",
          "Redis hit: p50 added over the gateway's floor (c=1), ms")


def _redis_reachable() -> bool:
    try:
        import redis

        client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=2)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


@pytest.mark.skipif(shutil.which("wrk") is None,
                    reason="wrk (the load generator) is not installed: apt-get install -y wrk")
@pytest.mark.timeout(280)
def test_cache_quick_prints_every_ratio() -> None:
    args = [] if _redis_reachable() else ["--no-redis"]
    done = subprocess.run([sys.executable, str(BENCH / "cache.py"), "--quick", *args], capture_output=True,
                          text=True, timeout=260, check=False)
    # exit 1: a leg failed (no answer at all, error answers, socket errors): never a matter of speed
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    for label in RATIOS:
        if "Redis" in label and args:
            continue
        if "today" in label and "no base revision" in done.stderr:
            continue
        assert re.search(rf"^{re.escape(label)}\s+[+\-]?[\d.,]+$", done.stdout, re.M), (
            f"no number for {label!r} in:\n{done.stdout}")


def _modes() -> ModuleType:
    """bench/harness/modes.py (bench/cache.py's legs), imported as the benchmarks import it: from bench/."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    return importlib.import_module("harness.modes")


modes = _modes()


def _result(requests: int, *, errors: int = 0, status_errors: int = 0, p50_ms: float = 1.0) -> Any:
    return modes.load.WrkResult(requests, 2.0, errors, status_errors, p50_ms, p50_ms, p50_ms)


def test_a_slow_leg_passes_and_one_without_answers_fails() -> None:
    assert modes.leg_problem(_result(3, p50_ms=900.0)) is None  # a loaded machine: slow, not wrong
    assert modes.leg_problem(_result(1000, errors=10)) is None  # within MAX_ERROR_SHARE
    assert "0 requests" in modes.leg_problem(_result(0))  # the hit-redis leg that served nothing
    assert "0 requests" in modes.leg_problem(_result(0, errors=16))
    assert "error answers" in modes.leg_problem(_result(500, status_errors=1))
    assert "socket errors" in modes.leg_problem(_result(100, errors=2))


def test_a_failed_leg_says_what_the_gateway_logged(tmp_path: Path) -> None:
    log = tmp_path / "access-hit-redis.log"
    earlier = b'{"status":200,"outcome":"ok","cache":"hit"}\n'
    log.write_bytes(earlier + b'{"status":499,"outcome":"client_disconnected","cache":"miss"}\n' * 6 + b"not json\n")
    summary = modes.access_summary(log, len(earlier))  # this leg's records only
    assert summary == "6 × 499 client_disconnected cache=miss"
    assert modes.access_summary(tmp_path / "absent.log", 0).startswith("nothing readable")
