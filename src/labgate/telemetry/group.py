"""Metrics of a ``--workers N`` process group: a scrape answers with every worker's counts.

Each worker keeps counting in its own plain dicts (``Metrics.observe``: nothing is added
to the request path). The parent makes a private directory before it forks; every worker
listens on a Unix socket there (``<pid>.sock``) and, when a sibling connects, writes its
own exposition text and closes. The worker that receives ``GET /metrics`` reads its
siblings' texts concurrently and :func:`merge` adds them to its own, sample by sample:
counters and histogram buckets add up, ``labgate_start_time_seconds`` takes the earliest
start, ``labgate_build_info`` stays 1. The cost is paid per scrape (one local connection
per sibling, a few hundred microseconds), never per request: see ``bench/metrics_workers.py``
and docs/observability.md for the comparison with prometheus-client's multiprocess mode.

A sibling that does not answer within :data:`SIBLING_TIMEOUT_S` (or has exited) is left
out of that scrape and counted in ``labgate_metrics_workers_missing``, as is a worker that
has not joined yet (the directory notes the group's size).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

SIBLING_TIMEOUT_S = 2.0  # a scrape waits at most this long for a sibling's text
MAX_SIBLING_BYTES = 64 * 1024 * 1024  # a sibling's text larger than this is refused (a bug, not metrics)
_FIRST = frozenset({"labgate_start_time_seconds"})  # the group's earliest value, not a sum
_ONE = frozenset({"labgate_build_info"})  # the same in every worker: kept, not added

log = logging.getLogger("labgate.metrics")
# True while this worker renders its text for a sibling's scrape: that read is not one of this
# worker's HTTP requests, so its in-flight count must not leave one out for it (server/serve.py)
FOR_SIBLING: ContextVar[bool] = ContextVar("labgate_metrics_for_sibling", default=False)


def make_group_dir(workers: int) -> str:
    """The parent's private directory for its ``workers`` workers' sockets (removed by
    :func:`remove_group_dir`); it notes the group's size, so a worker that has not started
    yet (or has died) is counted as missing rather than silently left out."""
    path = tempfile.mkdtemp(prefix="labgate-metrics-")
    (Path(path) / "size").write_text(str(workers))
    return path


def remove_group_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class WorkerGroup:
    """This worker's place in the group: answers siblings, and gathers them for a scrape."""

    def __init__(self, directory: str, *, timeout_s: float = SIBLING_TIMEOUT_S) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{os.getpid()}.sock"
        self.timeout_s = timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._render: Callable[[], str] | None = None

    async def start(self, render: Callable[[], str]) -> None:
        """Answer siblings with ``render()`` (this worker's own exposition)."""
        self._render = render
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert self._render is not None
            FOR_SIBLING.set(True)  # this connection's own task: the scrape's context is not touched
            writer.write(self._render().encode())
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def gather(self, own: str) -> str:
        """``own`` plus every sibling's text, merged into one exposition."""
        siblings = [p for p in self.directory.glob("*.sock") if p != self.path]
        texts = await asyncio.gather(*(self._read(p) for p in siblings))
        answered = [t for t in texts if t is not None]
        missing = max(self._size() - 1, len(texts)) - len(answered)
        return merge([own, *answered]) + (
            "# HELP labgate_metrics_workers Workers whose counts this scrape includes.\n"
            "# TYPE labgate_metrics_workers gauge\n"
            f"labgate_metrics_workers {len(answered) + 1}\n"
            "# HELP labgate_metrics_workers_missing Workers that did not answer this scrape in time.\n"
            "# TYPE labgate_metrics_workers_missing gauge\n"
            f"labgate_metrics_workers_missing {missing}\n")

    def _size(self) -> int:
        try:
            return int((self.directory / "size").read_text())
        except (OSError, ValueError):
            return 1

    async def _read(self, path: Path) -> str | None:
        data = bytearray()
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    while chunk := await reader.read(65536):
                        data += chunk
                        if len(data) > MAX_SIBLING_BYTES:
                            raise ValueError(f"more than {MAX_SIBLING_BYTES} bytes")
                finally:
                    writer.close()
            return data.decode()
        except (OSError, TimeoutError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            log.warning("worker metrics at %s did not answer: %s", path.name, exc)
            return None


def merge(texts: list[str]) -> str:
    """Add up several processes' expositions (format 0.0.4) sample by sample, family by family.

    Families keep the order of their first appearance; a series only one worker has is kept
    as it is. Values are summed, except the families in ``_FIRST`` (smallest) and ``_ONE``.
    """
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    for text in texts:
        current: dict[str, float] | None = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    name = parts[2]
                    header, current = families.setdefault(name, ([], {}))
                    if line not in header:
                        header.append(line)
                continue
            key, _, value = line.rpartition(" ")
            name = key.partition("{")[0]
            if current is None:
                current = families.setdefault(name, ([], {}))[1]
            number = float(value)
            if key in current:
                family = _family(name, families)
                if family in _FIRST:
                    number = min(current[key], number)
                elif family in _ONE:
                    number = current[key]
                else:
                    number += current[key]
            current[key] = number
    out: list[str] = []
    for header, samples in families.values():
        out += header
        out += [f"{key} {_number(value)}" for key, value in samples.items()]
    return "\n".join(out) + "\n"


def _family(sample: str, families: dict[str, tuple[list[str], dict[str, float]]]) -> str:
    if sample in families:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in families:
            return sample[: -len(suffix)]
    return sample


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
