"""``bench/limits.py --quick`` and ``bench/limits_e2e.py --quick`` as CI smoke: every case and ratio prints a number."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
NUMBER = r"[+-]?[\d,]+(?:\.\d+)?"


def test_limits_quick_prints_every_case() -> None:
    done = subprocess.run([sys.executable, str(BENCH / "limits.py"), "--quick"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for case in ("off", "key", "key+limits+budget (memory)"):
        assert re.search(rf"^{re.escape(case)}\s+({NUMBER}\s+){{3}}{NUMBER}$", done.stdout, re.M), done.stdout


@pytest.mark.skipif(shutil.which("wrk") is None,
                    reason="wrk (the load generator) is not installed: apt-get install -y wrk")
@pytest.mark.timeout(280)
def test_limits_e2e_quick_measures_on_and_off() -> None:
    argv = [sys.executable, str(BENCH / "limits_e2e.py"), "--quick", "--no-redis"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    if done.returncode != 0:  # a 2 s leg on a shared machine can miss once; a smoke that rots fails twice
        print(f"first --quick run failed, running it again:\n{done.stdout}\n{done.stderr}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    for mode in ("off", "on"):
        assert re.search(rf"^{mode}\s+{NUMBER} \({NUMBER}–{NUMBER}\)\s+{NUMBER}\s+{NUMBER}$", done.stdout,
                         re.M), done.stdout
    for label in ("keys+limits+budgets+cost on vs off, req/s ×", "on: gateway CPU added over off, µs/request"):
        assert re.search(rf"^{re.escape(label)}\s+{NUMBER}$", done.stdout, re.M), done.stdout
