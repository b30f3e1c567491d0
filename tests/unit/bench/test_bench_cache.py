"""``bench/cache.py --quick`` as CI smoke: every mode runs and every ratio is printed (never judged on time)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    for label in RATIOS:
        if "Redis" in label and args:
            continue
        if "today" in label and "no base revision" in done.stderr:
            continue
        assert re.search(rf"^{re.escape(label)}\s+[+\-]?[\d.,]+$", done.stdout, re.M), (
            f"no number for {label!r} in:\n{done.stdout}")
