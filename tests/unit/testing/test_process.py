"""The helpers that run ``labgate`` as a child process in tests fail loudly, never hang."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labgate.testing.process import LISTENING, StartError, labgate, stop


def test_a_child_that_exits_before_listening_fails_with_what_it_said(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text("providers:\n  x:\n    type: olama\n")
    with (pytest.raises(StartError, match=r"(?s)exited early \(1\).*unknown provider type 'olama'"),
          labgate("serve", "--config", str(tmp_path), "--port", "0")):
        pytest.fail("the block must not run")


def test_stop_kills_a_child_that_ignores_sigterm_and_says_so() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                              "time.sleep(60)"], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    with pytest.raises(subprocess.TimeoutExpired):
        stop((child,), timeout_s=0.5)
    assert child.returncode is not None  # killed, not left behind


@pytest.mark.parametrize(("line", "url", "port"), [
    ("labgate: listening on http://127.0.0.1:8123 (1 worker)", "http://127.0.0.1:8123", 8123),
    ("labgate: gateway on http://127.0.0.1:4000", "http://127.0.0.1:4000", 4000),
    ("labgate: listening on http://[::1]:9000 ", "http://[::1]:9000", 9000),
    ("labgate: listening on http://0.0.0.0:80\n", "http://0.0.0.0:80", 80),
])
def test_the_listening_line(line: str, url: str, port: int) -> None:
    match = LISTENING.search(line)
    assert match is not None and (match.group(1), int(match.group(3))) == (url, port)
