"""The load generators: wrk for whole responses, ``streams.py`` for SSE; both pinned to the load core."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
LUA = HERE / "post.lua"
STREAM_CLIENT = HERE / "streams.py"
WRK_MISSING = ("wrk is not installed. It is the load generator for whole responses: "
               "install it with `apt-get install -y wrk` (Debian/Ubuntu package `wrk`).")
_LINE = re.compile(r"^BENCH (.*)$", re.MULTILINE)


def wrk_path() -> str | None:
    return shutil.which("wrk")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a leg sends its requests and what it must send along."""

    url: str  # the chat completions URL
    headers: tuple[str, ...]  # "name: value"
    model: str = "bench"


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int  # connect + read + write + timeout
    status_errors: int  # answers with status ≥ 400
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def body(model: str, *, stream: bool = False, chunks: int = 20) -> str:
    payload: dict[str, object] = {"model": model, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."}]}
    if stream:
        payload.update(stream=True, max_tokens=chunks)
    return orjson.dumps(payload).decode()


def _run(argv: Sequence[str], *, cores: frozenset[int], timeout: float) -> str:
    proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False,
                          preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} exited with {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()[-400:]}")
    return proc.stdout.decode(errors="replace")


def wrk_start(target: Target, *, connections: int, seconds: int, cores: frozenset[int]) -> subprocess.Popen[bytes]:
    """Start a closed-loop wrk run of non-stream chat completions (``wrk_finish`` collects it)."""
    env = {**os.environ, "BENCH_BODY": body(target.model), "BENCH_HEADERS": "\n".join(target.headers)}
    argv = [wrk_path() or "wrk", "-t1", f"-c{connections}", f"-d{max(1, seconds)}s", "--timeout", "10s",
            "-s", str(LUA), target.url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: os.sched_setaffinity(0, cores))


def wrk_finish(proc: subprocess.Popen[bytes], *, timeout: float) -> WrkResult:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {err.decode(errors='replace').strip()[-400:]}")
    match = _LINE.search(out.decode(errors="replace"))
    if match is None:
        raise RuntimeError(f"wrk printed no BENCH line:\n{out.decode(errors='replace')[-400:]}")
    f = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    return WrkResult(requests=int(f["requests"]), seconds=f["duration_us"] / 1e6,
                     errors=int(f["connect"] + f["read"] + f["write"] + f["timeout"]),
                     status_errors=int(f["status"]), p50_ms=f["p50_us"] / 1000, p90_ms=f["p90_us"] / 1000,
                     p99_ms=f["p99_us"] / 1000)


def wrk(target: Target, *, connections: int, seconds: int, cores: frozenset[int]) -> WrkResult:
    """One closed-loop wrk run of non-stream chat completions, to the end."""
    proc = wrk_start(target, connections=connections, seconds=seconds, cores=cores)
    try:
        return wrk_finish(proc, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@dataclass(frozen=True, slots=True)
class StreamResult:
    streams: int
    seconds: float
    errors: int
    first_error: str | None
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    stream_p50_ms: float

    @property
    def per_s(self) -> float:
        return self.streams / self.seconds if self.seconds else 0.0


def streams(target: Target, *, model: str, chunks: int, connections: int, seconds: float, warmup: float,
            cores: frozenset[int]) -> StreamResult:
    """One closed-loop run of SSE streams through ``streams.py``."""
    argv = [sys.executable, str(STREAM_CLIENT), target.url, "--body", body(model, stream=True, chunks=chunks),
            "-c", str(connections), "-d", str(seconds), "--warmup", str(warmup)]
    for header in target.headers:
        argv += ["--header", header]
    out = _run(argv, cores=cores, timeout=seconds + warmup + 60)
    r = orjson.loads(out.strip().splitlines()[-1])
    return StreamResult(streams=r["streams"], seconds=r["seconds"], errors=r["errors"], first_error=r["first_error"],
                        ttfb_p50_ms=r["ttfb_us"]["p50"] / 1000, ttfb_p99_ms=r["ttfb_us"]["p99"] / 1000,
                        stream_p50_ms=r["stream_us"]["p50"] / 1000)
