"""Response cache benchmark: what the cache costs when unused and what a hit saves, as ratios in one run.

    .venv/bin/python bench/cache.py [--quick] [--rounds 3] [--duration 10] [--connections 16]
                                    [--base-rev REV] [--redis-url URL] [--no-redis] [--json]

Uses the gateway benchmark's harness (``bench/harness``): the fast fake
upstream (``bench/upstream.py``) and wrk pinned to the load core, ``labgate
serve`` pinned to the gateway core. Each round starts a fresh gateway per
mode, in a rotated order, and measures two legs: non-stream chat completions
at ``--connections`` (closed loop: req/s, the gateway's CPU µs per request)
and at one connection (p50 latency of one request on an idle gateway).
Modes differ only in ``gateway.yaml`` (history off everywhere: ``store:
{capture: none}``) and in what wrk sends:

    base         labgate from --base-rev (default: the merge-base with main): today's gateway, no cache
    none         this tree, no cache: section                           → "cache off" ratio: none ÷ base
    miss-memory  cache (memory, nondeterministic: cache), every request
                 sent with cache-control: no-store: looked up, missed, proxied
    hit-memory   the same cache, the entry stored by a warm-up request: every request a hit
    hit-redis    cache in Redis (--redis-url, a fresh namespace), every request a hit
    floor        the gateway answering GET /health/liveness: its HTTP floor (no lifecycle, no upstream)

It prints per mode the median req/s (min–max), CPU µs/request, c=1 p50 and
the CPU other processes took on the gateway core during the leg, then the
ratios (medians of per-round ratios): cache off vs today, memory hit
vs proxied miss, the CPU a Redis hit adds over a memory hit, and the latency
a hit adds over the gateway's floor (c=1 p50) for both backends. The Redis
server runs wherever the machine runs it (its CPU is not the gateway's).
Timing is never pass/fail: exit status 0 when every leg ran, 1 when one
failed, 2 when the harness could not start.
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
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import orjson
except ImportError as missing:
    raise SystemExit(f"bench: {missing.name} is missing — run with the project's venv: "
                     f".venv/bin/python {' '.join(sys.argv)}") from None

from harness import load, machine, procs, targets

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
KEY = "sk-labgate-cache-bench"  # a throwaway key for the benchmark only
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
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


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if load.wrk_path() is None:
        print(f"bench: {load.WRK_MISSING}", file=sys.stderr)
        return 2
    place = machine.placement()
    work = Path(tempfile.mkdtemp(prefix="labgate-cache-bench-"))
    load1, _, _ = machine.load_average()
    print(f"bench: {machine.cpu_model()}, {place.cores} cores; {place.note}; load average {load1:.2f}",
          file=sys.stderr)
    upstream_port = procs.free_port()
    upstream = procs.spawn([sys.executable, str(BENCH / "upstream.py"), "--port", str(upstream_port)],
                           cores=place.load, log=work / "upstream.log")
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    failed = False
    try:
        procs.wait_listening(upstream_port, proc=upstream, timeout=15)
        modes = _modes(args, work, namespace)
        failed = interleave(args, modes, place, work, f"http://127.0.0.1:{upstream_port}")
        _report(modes, args)
    except (RuntimeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop(upstream)
        if not args.no_redis:
            with contextlib.suppress(Exception):
                _flush_redis(args.redis_url, namespace)
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
                _measure(args, mode, place, work, upstream, f"r{number}")
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                print(f"bench: round {number + 1} {mode.name} failed: {exc}", file=sys.stderr)
                failed = True
                continue
            print(f"bench: round {number + 1} {mode.name:12} {mode.rps[-1]:8.0f} req/s "
                  f"{mode.cpu_us[-1]:7.1f} µs CPU/req  c=1 p50 {mode.c1_p50_ms[-1]:.3f} ms", file=sys.stderr)
    return failed


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/cache.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke: 1 round, 2 s legs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds of the c=N leg (the c=1 leg: half)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--base-rev", help="today's labgate: this git revision's src/ (default: merge-base with main; "
                                      "'none' to skip the base mode)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    p.add_argument("--no-redis", action="store_true", help="skip the Redis mode")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    return args


def _base_rev(args: argparse.Namespace) -> str | None:
    if args.base_rev:
        return None if args.base_rev == "none" else str(args.base_rev)
    done = subprocess.run(["git", "-C", str(REPO), "merge-base", "HEAD", "main"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or None


def _modes(args: argparse.Namespace, work: Path, namespace: str) -> list[Mode]:
    tree, what = targets.snapshot_labgate(REPO, work, rev=None)
    print(f"bench: labgate under test: {what}", file=sys.stderr)
    quiet = "store:\n  capture: none\n"
    memory = quiet + "cache:\n  backend: memory\n  nondeterministic: cache\n"
    modes = []
    base = _base_rev(args)
    if base is not None:
        source, what = targets.snapshot_labgate(REPO, work, rev=base)
        print(f"bench: today's labgate (base): {what}", file=sys.stderr)
        modes.append(Mode("base", quiet, source))
    else:
        print("bench: no base revision (no 'main' branch?): the cache-off ratio is not measured", file=sys.stderr)
    modes += [Mode("none", quiet, tree),
              Mode("miss-memory", memory, tree, headers=("cache-control: no-store",)),
              Mode("hit-memory", memory, tree)]
    if not args.no_redis:
        _check_redis(args.redis_url)
        modes.append(Mode("hit-redis", quiet + f"state:\n  url: {args.redis_url}\ncache:\n  backend: redis\n"
                                              f"  namespace: {namespace}\n  nondeterministic: cache\n", tree))
    modes.append(Mode("floor", quiet, tree, path="/health/liveness", method="GET"))
    return modes


def _check_redis(url: str) -> None:
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


def _flush_redis(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        for key in client.scan_iter(match=f"labgate:{namespace}:*"):
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
        raise RuntimeError(f"{mode.name}: {problem}; the gateway logged {_access_summary(access, start)}")
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


def _access_summary(path: Path, start: int) -> str:
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


def _measure(args: argparse.Namespace, mode: Mode, place: machine.Placement, work: Path, upstream: str,
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


def _median_ratio(a: Mode | None, b: Mode | None, attr: str, *, difference: bool = False) -> float | None:
    """Median over rounds of a's value ÷ b's (or a − b), rounds paired by index."""
    if a is None or b is None:
        return None
    pairs = list(zip(getattr(a, attr), getattr(b, attr), strict=False))
    values = [x - y if difference else x / y for x, y in pairs if difference or y]
    return statistics.median(values) if values else None


def _report(modes: list[Mode], args: argparse.Namespace) -> None:
    by = {m.name: m for m in modes}
    lines = [f"{'mode':<12} {'req/s (c=' + str(args.connections) + ')':>22} {'CPU µs/req':>12} {'c=1 p50 ms':>11} "
             f"{'others on core %':>17}"]
    for m in modes:
        if not m.rps:
            lines.append(f"{m.name:<12} {'—':>22}")
            continue
        spread = f"{statistics.median(m.rps):,.0f} ({min(m.rps):,.0f}–{max(m.rps):,.0f})"
        lines.append(f"{m.name:<12} {spread:>22} {statistics.median(m.cpu_us):12.1f} "
                     f"{statistics.median(m.c1_p50_ms):11.3f} {statistics.median(m.other_pct):17.1f}")
    ratios = {
        "cache_off_vs_today_rps": _median_ratio(by.get("none"), by.get("base"), "rps"),
        "cache_off_vs_today_cpu": _median_ratio(by.get("base"), by.get("none"), "cpu_us"),
        "memory_hit_vs_proxied_miss_rps": _median_ratio(by.get("hit-memory"), by.get("miss-memory"), "rps"),
        "memory_hit_vs_proxied_miss_cpu": _median_ratio(by.get("miss-memory"), by.get("hit-memory"), "cpu_us"),
        "redis_hit_added_cpu_us_over_memory_hit": _median_ratio(by.get("hit-redis"), by.get("hit-memory"), "cpu_us",
                                                                difference=True),
        "memory_hit_added_p50_ms_over_floor": _median_ratio(by.get("hit-memory"), by.get("floor"), "c1_p50_ms",
                                                            difference=True),
        "redis_hit_added_p50_ms_over_floor": _median_ratio(by.get("hit-redis"), by.get("floor"), "c1_p50_ms",
                                                           difference=True),
        "proxied_miss_added_p50_ms_over_floor": _median_ratio(by.get("miss-memory"), by.get("floor"), "c1_p50_ms",
                                                              difference=True),
    }
    if args.json:
        doc = {"modes": {m.name: {"rps": m.rps, "cpu_us": m.cpu_us, "c1_p50_ms": m.c1_p50_ms,
                                  "other_pct": m.other_pct} for m in modes},
               "ratios": ratios}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    labels = {
        "cache_off_vs_today_rps": ("cache off (no cache: section) vs today, req/s ×", "{:.3f}"),
        "cache_off_vs_today_cpu": ("cache off vs today, CPU/request: today ÷ off", "{:.3f}"),
        "memory_hit_vs_proxied_miss_rps": ("memory hit vs proxied miss, req/s ×", "{:.2f}"),
        "memory_hit_vs_proxied_miss_cpu": ("memory hit vs proxied miss, CPU/request: miss ÷ hit", "{:.2f}"),
        "redis_hit_added_cpu_us_over_memory_hit": ("Redis hit: gateway CPU added over a memory hit, µs/req", "{:+.1f}"),
        "memory_hit_added_p50_ms_over_floor": ("memory hit: p50 added over the gateway's floor (c=1), ms", "{:+.3f}"),
        "redis_hit_added_p50_ms_over_floor": ("Redis hit: p50 added over the gateway's floor (c=1), ms", "{:+.3f}"),
        "proxied_miss_added_p50_ms_over_floor": ("proxied miss: p50 added over the floor (c=1), ms", "{:+.3f}"),
    }
    lines.append("")
    for key, value in ratios.items():
        label, fmt = labels[key]
        lines.append(f"{label:<62} {'—' if value is None else fmt.format(value)}")
    lines.append("(ratios: medians of per-round values; floor: GET /health/liveness on the same gateway; CPU/request "
                 "ratios hold up better than req/s when others use the gateway core — see 'others on core %')")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
