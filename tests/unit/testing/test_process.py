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
    with pytest.raises(subprocess.SubprocessError, match=r"still running 0.5 s after SIGTERM"):
        stop((child,), timeout_s=0.5)
    assert child.returncode is not None  # killed, not left behind


def test_a_labgate_child_that_hangs_at_stop_shows_its_stacks(tmp_path: Path) -> None:
    """SIGABRT before the kill: the child's faulthandler (PYTHONFAULTHANDLER, set by spawn) prints where it hangs."""
    hang = tmp_path / "sitecustomize.py"
    hang.write_text("import atexit, time\natexit.register(time.sleep, 60)\n")  # stops, then hangs at exit
    with pytest.raises(subprocess.SubprocessError, match=r"(?s)still running.*(Thread|Stack)"), \
            labgate("demo", "--port", "0", "--tokens-per-s", "0", env={"PYTHONPATH": str(tmp_path)},
                    stop_timeout_s=0.5):
        pass


@pytest.mark.parametrize(("line", "url", "port"), [
    ("labgate: listening on http://127.0.0.1:8123 (1 worker)", "http://127.0.0.1:8123", 8123),
    ("labgate: gateway on http://127.0.0.1:4000", "http://127.0.0.1:4000", 4000),
    ("labgate: listening on http://[::1]:9000 ", "http://[::1]:9000", 9000),
    ("labgate: listening on http://0.0.0.0:80\n", "http://0.0.0.0:80", 80),
])
def test_the_listening_line(line: str, url: str, port: int) -> None:
    match = LISTENING.search(line)
    assert match is not None and (match.group(1), int(match.group(3))) == (url, port)
