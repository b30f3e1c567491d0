"""``labgate`` as a child process in a test: started, waited for, and stopped the same way everywhere.

    with labgate("serve", "--config", str(config), "--port", "0") as gw:
        urllib.request.urlopen(gw.url + "/health")        # it printed "listening on http://…"
    assert gw.returncode == 0                              # SIGTERM at the end of the block

Two ways to know it is up: by the line it prints on stderr (:func:`labgate`, for one process the
test talks to at once), or by polling ``/health/liveness`` (:func:`serve_logged` then
:func:`wait_live`, for several processes whose output goes to a log file the test reads on failure).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LISTENING = re.compile(r"(?:listening on|gateway on) (http://(\[[^\]]+\]|[^\s:/]+):(\d+))")
"""The line ``labgate serve`` (and ``labgate embeddings serve``) prints once it accepts connections."""


class StartError(AssertionError):
    """The child exited, or printed no listening line, before its start deadline."""


@dataclass
class Started:
    """A running ``labgate`` child: its process, the URL it printed, and what it said before that."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    said: str
    stop_timeout_s: float = 30.0

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def stop(self, timeout_s: float | None = None) -> int:
        """SIGTERM (once) and wait; the exit status. Fails (:func:`stop`) after killing a child that hangs."""
        return stop((self.proc,), self.stop_timeout_s if timeout_s is None else timeout_s)[0]


def free_port() -> int:
    """A TCP port nothing listens on right now (for a child that must be told its port up front)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(*args: str, env: dict[str, str] | None = None, stdout: int | None = subprocess.DEVNULL,
          stderr: int | None = subprocess.PIPE, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m labgate ARGS`` with this interpreter; ``env`` is added to the environment.

    With ``log``, stdout and stderr both go to that file (truncated first).
    """
    # faulthandler: a child that hangs at shutdown prints every thread's stack on SIGABRT (see stop)
    full_env = {**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})}
    command = [sys.executable, "-m", "labgate", *args]
    if log is None:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=full_env)
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> list[int]:
    """SIGTERM every child still running, then wait for each. A child past ``timeout_s`` gets SIGABRT
    (its faulthandler prints every thread's stack), is killed, and the test fails with what it printed
    last (a hang on shutdown is a failure, not something to wait out)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    hung: list[str] = []
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            said = _unread(proc.stderr)[-6000:]
            hung.append(f"{proc.args!r} still running {timeout_s} s after SIGTERM; it said last:\n{said}")
    if hung:
        raise subprocess.SubprocessError("\n\n".join(hung))
    return [proc.returncode for proc in procs]


def _unread(stream: IO[bytes] | None) -> str:
    """What a dead child's stderr pipe still holds, without waiting for its end (a grandchild, such as
    the demo's simulator, may hold the pipe open)."""
    if stream is None:
        return ""
    os.set_blocking(stream.fileno(), False)
    try:
        return (stream.read() or b"").decode(errors="replace")
    except OSError:
        return ""


@contextmanager
def labgate(*args: str, env: dict[str, str] | None = None, stdout: int | None = subprocess.DEVNULL,
            start_timeout_s: float = 60.0, stop_timeout_s: float = 30.0) -> Iterator[Started]:
    """Run ``labgate ARGS``; yield once it prints its listening line; SIGTERM it when the block ends.

    A child that exits first, or prints no such line within ``start_timeout_s``, fails the test with
    everything it printed. A child that outlives ``stop_timeout_s`` after SIGTERM is killed and the
    test fails with its stacks (:func:`stop`).
    """
    proc = spawn(*args, env=env, stdout=stdout)
    assert proc.stderr is not None
    said = ""
    deadline = time.monotonic() + start_timeout_s
    try:
        while (match := LISTENING.search(said)) is None:
            if time.monotonic() > deadline:  # before the next read: a line read late still counts
                raise StartError(f"no listening line within {start_timeout_s} s in: {said}")
            line = proc.stderr.readline().decode(errors="replace")
            if not line and proc.poll() is not None:
                raise StartError(f"labgate exited early ({proc.returncode}): {said}")
            said += line
        started = Started(proc, match.group(1), int(match.group(3)), said, stop_timeout_s)
        yield started
    finally:
        stop((proc,), stop_timeout_s)


def serve_logged(config: Path, port: int, log: Path, *extra: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``labgate serve --config CONFIG --port PORT EXTRA…`` with its output in ``log``; see :func:`wait_live`."""
    return spawn("serve", "--config", str(config), "--port", str(port), *extra, env=env, log=log)


def live(url: str) -> bool:
    """``GET URL/health/liveness`` answers 200."""
    try:
        with urllib.request.urlopen(url + "/health/liveness", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def wait_live(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> None:
    """Wait until the child at ``url`` answers its liveness check; fail with its log if it exits or is late."""
    deadline = time.monotonic() + timeout_s
    while not live(url):
        if proc.poll() is not None:
            raise StartError(f"the gateway exited ({proc.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise StartError(f"the gateway did not start within {timeout_s} s:\n{tail(log)}")
        time.sleep(0.05)


@dataclass
class Fleet:
    """Several ``labgate serve`` processes (one per config and log file), addressed by ``urls`` in order."""

    procs: list[subprocess.Popen[bytes]]
    urls: list[str]
    logs: list[Path]

    @classmethod
    def start(cls, configs: list[Path], logs: list[Path], *extra: str,
              env: dict[str, str] | None = None) -> Fleet:
        """Start one ``labgate serve`` per config on a free port, each writing to its log; not yet waited for."""
        ports = [free_port() for _ in configs]
        procs = [serve_logged(config, port, log, *extra, env=env)
                 for config, port, log in zip(configs, ports, logs, strict=True)]
        return cls(procs, [f"http://127.0.0.1:{port}" for port in ports], list(logs))

    def wait_live(self, timeout_s: float = 60.0) -> None:
        for url, proc, log in zip(self.urls, self.procs, self.logs, strict=True):
            wait_live(url, proc, log, timeout_s)

    def tail(self, chars: int = 1500) -> str:
        return "\n".join(tail(log, chars) for log in self.logs)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM all, wait; a process that hangs is killed and reported (:func:`stop`)."""
        stop(self.procs, timeout_s)
