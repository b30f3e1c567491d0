"""Processes under test: start pinned, find who listens on a port, read CPU time and RSS from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from harness.machine import TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(argv: Sequence[str], *, cores: frozenset[int], log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, stdout: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``cores`` (set before exec, so every thread inherits it), in its own group.

    stderr goes to ``log``; stdout to ``stdout`` if given, else to ``log`` too.
    """
    err = log.open("ab")
    out = stdout if stdout is not None else err
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                                env=dict(env) if env is not None else None, start_new_session=True,
                                preexec_fn=lambda: os.sched_setaffinity(0, cores))
    finally:
        err.close()


def stop(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
    """SIGTERM the process group it leads, then SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def helpers(pid: int) -> list[int]:
    """The processes below ``pid`` (labgate's history writer)."""
    return descendants(pid)[1:]


def pin_helpers(pid: int, cores: frozenset[int]) -> list[int]:
    """Move the processes below ``pid`` to ``cores``, every thread of them (``sched_setaffinity`` of a
    pid moves one thread only; threads started before it keep their cores); the processes moved."""
    moved = []
    for child in helpers(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{child}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), cores)
            moved.append(child)
    return moved


def total_cpu_seconds(pids: list[int]) -> float:
    """CPU time of these processes, those still alive."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
    return total


def helpers_cpu_seconds(pid: int) -> float:
    """CPU time of the live processes below ``pid``."""
    return total_cpu_seconds(helpers(pid))


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and the processes below it."""
    total = rss_mb(pid)
    for child in helpers(pid):
        with contextlib.suppress(OSError):
            total += rss_mb(child)
    return total


def listener(port: int, root: int) -> int | None:
    """The process under ``root`` that holds the socket listening on ``port`` (npx → node, etc.)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        return pid
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def rss_mb(pid: int) -> float:
    """Resident memory in MiB; OSError when the process is gone (a zombie has no VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(f"process {pid} has exited")


def wait_listening(port: int, *, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until something accepts on ``port``; raise if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.settimeout(0.2)
            sock.connect(("127.0.0.1", port))
            return
        time.sleep(0.005)
    raise RuntimeError(f"not listening on port {port} after {timeout:.0f} s")
