"""Gateway modes measured in interleaved rounds under wrk: what bench/cache.py and bench/limits_e2e.py share.

A :class:`Mode` is a ``labgate serve`` configuration (its ``gateway.yaml`` additions, a config edit, the
``src/`` snapshot it runs, the headers wrk sends). :func:`run` starts the fast fake upstream
(``bench/upstream.py``), measures every mode in ``args.rounds`` rounds (:func:`interleave`: a fresh
gateway per mode and round, in a rotated order), prints the report and cleans up; per leg the c=N
closed loop (req/s, the gateway's CPU µs per request from /proc, others' CPU on its core) and the c=1
p50. Slow is never a failure; a leg without answers, or with error answers, is (:func:`leg_problem`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from harness import load, machine, procs, targets

BENCH = Path(__file__).resolve().parent.parent
KEY = "sk-labgate-cache-bench"  # a throwaway key for the benchmark only
MAX_ERROR_SHARE = 0.01  # socket errors (connect, read, write, timeout) a leg may have per request


@dataclass(slots=True)
class Mode:
    name: str
    gateway_yaml: str  # appended to the generated gateway.yaml
    source: Path  # the src/ snapshot it runs
    headers: tuple[str, ...] = ()  # sent with every request, besides the key
    path: str = "/v1/chat/completions"
    method: str = "POST"
    edit_config: Callable[[Path], None] | None = None  # changes the generated config directory before serving
    env: dict[str, str] = field(default_factory=dict)  # added to the gateway's environment
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    c1_p50_ms: list[float] = field(default_factory=list)
    other_pct: list[float] = field(default_factory=list)  # others' CPU on the gateway core during the c=N leg


def run(args: argparse.Namespace, *, prefix: str, modes: Callable[[Path], list[Mode]],
        report: Callable[[list[Mode]], None], cleanup: Callable[[], None] | None = None) -> int:
    """The whole benchmark: ``modes(work)`` measured in interleaved rounds, then ``report``; ``cleanup`` (e.g.
    the Redis namespace) runs whatever happens. Exit status: 0 every leg ran, 1 one failed, 2 no harness."""
    if load.wrk_path() is None:
        print(f"bench: {load.WRK_MISSING}", file=sys.stderr)
        return 2
    place = machine.placement()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    load1, _, _ = machine.load_average()
    print(f"bench: {machine.cpu_model()}, {place.cores} cores; {place.note}; load average {load1:.2f}",
          file=sys.stderr)
    upstream_port = procs.free_port()
    upstream = procs.spawn([sys.executable, str(BENCH / "upstream.py"), "--port", str(upstream_port)],
                           cores=place.load, log=work / "upstream.log")
    failed = False
    try:
        procs.wait_listening(upstream_port, proc=upstream, timeout=15)
        measured = modes(work)
        failed = interleave(args, measured, place, work, f"http://127.0.0.1:{upstream_port}")
        report(measured)
    except (RuntimeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop(upstream)
        if cleanup is not None:
            with contextlib.suppress(Exception):
                cleanup()
        if failed:
            print(f"bench: logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def interleave(args: argparse.Namespace, modes: list[Mode], place: machine.Placement, work: Path,
               upstream: str) -> bool:
    """``args.rounds`` rounds, each measuring every mode on a fresh gateway in a rotated order; True when a leg
    failed (said on stderr; the other legs go on)."""
    failed = False
    for number in range(args.rounds):
        turn = number % len(modes)
        for mode in modes[turn:] + modes[:turn]:
            try:
                measure(args, mode, place, work, upstream, f"r{number}")
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                print(f"bench: round {number + 1} {mode.name} failed: {exc}", file=sys.stderr)
                failed = True
                continue
            print(f"bench: round {number + 1} {mode.name:12} {mode.rps[-1]:8.0f} req/s "
                  f"{mode.cpu_us[-1]:7.1f} µs CPU/req  c=1 p50 {mode.c1_p50_ms[-1]:.3f} ms", file=sys.stderr)
    return failed


def check_redis(url: str) -> None:
    try:
        import redis
    except ImportError:
        raise RuntimeError("the Redis mode needs the redis client (pip install 'labgate[redis]'); "
                           "or run with --no-redis") from None
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        raise RuntimeError(f"Redis at {url} is not reachable ({exc}); run with --no-redis to skip it") from None
    finally:
        client.close()


def flush_redis(url: str, pattern: str) -> None:
    """Delete the keys matching ``pattern`` (the benchmark's own namespace; never a flush of the database)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        for key in client.scan_iter(match=pattern):
            client.unlink(key)
    finally:
        client.close()


@contextlib.contextmanager
def _gateway(mode: Mode, place: machine.Placement, work: Path, upstream: str, tag: str) -> Iterator[tuple[int, int]]:
    """A fresh ``labgate serve`` for this mode: (port, the pid of the process serving it)."""
    port = procs.free_port()
    config = work / f"config-{mode.name}"
    targets.write_labgate_config(config, upstream=upstream, port=port, extra=mode.gateway_yaml)
    if mode.edit_config is not None:
        mode.edit_config(config)
    env = {**os.environ, "LABGATE_BENCH_KEY": KEY, "LABGATE_BENCH_UPSTREAM_KEY": targets.UPSTREAM_KEY,
           "PYTHONPATH": os.pathsep.join(filter(None, (str(mode.source), os.environ.get("PYTHONPATH")))),
           **mode.env}
    with (work / f"access-{mode.name}.log").open("ab") as access:
        proc = procs.spawn([*targets.labgate_command(), "serve", "--config", str(config)], cores=place.gateway,
                           log=work / f"labgate-{mode.name}-{tag}.log", env=env, stdout=access)
    try:
        procs.wait_listening(port, proc=proc, timeout=30)
        _wait_answering(port, proc, timeout=30)
        yield port, procs.listener(port, proc.pid) or proc.pid
    finally:
        procs.stop(proc)


def _wait_answering(port: int, proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """Until the gateway answers HTTP (its liveness), not only accepts TCP: a leg starts on a ready gateway."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveness", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited ({proc.returncode}) before answering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway accepted but did not answer /health/liveness within {timeout:g}s")
        time.sleep(0.05)


def _lua(work: Path, method: str) -> Path:
    """harness/post.lua, or the same script sending GETs without a body (the floor mode)."""
    if method == "POST":
        return load.LUA
    script = work / "get.lua"
    if not script.exists():
        text = load.LUA.read_text().replace('wrk.method = "POST"', 'wrk.method = "GET"')
        script.write_text(text.replace("wrk.body = os.getenv", "local _ = os.getenv"))
    return script


def _wrk(target: str, mode: Mode, work: Path, *, connections: int, seconds: int,
         cores: frozenset[int]) -> load.WrkResult:
    env = {**os.environ, "BENCH_BODY": load.body("bench"),
           "BENCH_HEADERS": "\n".join((f"authorization: Bearer {KEY}", *mode.headers))}
    argv = [load.wrk_path() or "wrk", "-t1", f"-c{connections}", f"-d{max(1, seconds)}s", "--timeout", "10s",
            "-s", str(_lua(work, mode.method)), target]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: os.sched_setaffinity(0, cores))
    access = work / f"access-{mode.name}.log"
    start = access.stat().st_size if access.exists() else 0
    try:
        result = load.wrk_finish(proc, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    problem = leg_problem(result)
    if problem is not None:
        raise RuntimeError(f"{mode.name}: {problem}; the gateway logged {access_summary(access, start)}")
    return result


def leg_problem(result: load.WrkResult) -> str | None:
    """Why a leg failed, or None. Slow is never a failure (a loaded machine); no answers or wrong ones are.

    A leg fails when it got no answer at all, any error answer (status ≥ 400), or socket errors
    (connect, read, write, wrk's timeouts) for more than ``MAX_ERROR_SHARE`` of its requests.
    """
    if result.requests == 0:
        return f"0 requests answered in {result.seconds:.1f} s ({result.errors} socket errors)"
    if result.status_errors:
        return f"{result.status_errors} error answers of {result.requests} requests"
    if result.errors > result.requests * MAX_ERROR_SHARE:
        return f"{result.errors} socket errors for {result.requests} requests"
    return None


def access_summary(path: Path, start: int) -> str:
    """What the gateway's access log says about a leg: its records counted by status, outcome and cache."""
    counts: dict[str, int] = {}
    try:
        with path.open("rb") as log:
            log.seek(start)
            for line in log:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                    doc = orjson.loads(line)
                    what = f"{doc.get('status')} {doc.get('outcome')} cache={doc.get('cache')}"
                    counts[what] = counts.get(what, 0) + 1
    except OSError as exc:
        return f"nothing readable ({exc})"
    if not counts:
        return "no finished request"
    return ", ".join(f"{n} × {what}" for what, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def measure(args: argparse.Namespace, mode: Mode, place: machine.Placement, work: Path, upstream: str,
             tag: str) -> None:
    with _gateway(mode, place, work, upstream, tag) as (port, pid):
        target = f"http://127.0.0.1:{port}{mode.path}"
        # warm-up: fills the cache entry (hit modes), the pools and the code paths
        _wrk(target, mode, work, connections=args.connections, seconds=1 if args.quick else 2, cores=place.load)
        cpu0, busy0, wall0 = procs.cpu_seconds(pid), machine.core_busy_ticks(place.gateway), time.monotonic()
        result = _wrk(target, mode, work, connections=args.connections, seconds=args.duration, cores=place.load)
        cpu1, busy1, wall1 = procs.cpu_seconds(pid), machine.core_busy_ticks(place.gateway), time.monotonic()
        one = _wrk(target, mode, work, connections=1, seconds=max(1, args.duration // 2), cores=place.load)
    mode.rps.append(result.rps)
    mode.cpu_us.append((cpu1 - cpu0) / result.requests * 1e6)
    mode.c1_p50_ms.append(one.p50_ms)
    others = (busy1 - busy0) / machine.TICKS - (cpu1 - cpu0)
    mode.other_pct.append(max(0.0, others) / (wall1 - wall0) / len(place.gateway) * 100)


def paired(a: Mode | None, b: Mode | None, attr: str, *, difference: bool = False) -> float | None:
    """Median over rounds of a's value ÷ b's (or a − b), rounds paired by index."""
    if a is None or b is None:
        return None
    pairs = list(zip(getattr(a, attr), getattr(b, attr), strict=False))
    values = [x - y if difference else x / y for x, y in pairs if difference or y]
    return statistics.median(values) if values else None
