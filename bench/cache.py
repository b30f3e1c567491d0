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
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

try:
    import orjson
except ImportError as missing:
    raise SystemExit(f"bench: {missing.name} is missing — run with the project's venv: "
                     f".venv/bin/python {' '.join(sys.argv)}") from None

from harness import targets
from harness.modes import Mode, check_redis, flush_redis, paired, run

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    cleanup = None if args.no_redis else lambda: flush_redis(args.redis_url, f"labgate:{namespace}:*")
    return run(args, prefix="labgate-cache-bench-", modes=lambda work: _modes(args, work, namespace),
               report=lambda modes: _report(modes, args), cleanup=cleanup)


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
        check_redis(args.redis_url)
        modes.append(Mode("hit-redis", quiet + f"state:\n  url: {args.redis_url}\ncache:\n  backend: redis\n"
                                              f"  namespace: {namespace}\n  nondeterministic: cache\n", tree))
    modes.append(Mode("floor", quiet, tree, path="/health/liveness", method="GET"))
    return modes


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
        "cache_off_vs_today_rps": paired(by.get("none"), by.get("base"), "rps"),
        "cache_off_vs_today_cpu": paired(by.get("base"), by.get("none"), "cpu_us"),
        "memory_hit_vs_proxied_miss_rps": paired(by.get("hit-memory"), by.get("miss-memory"), "rps"),
        "memory_hit_vs_proxied_miss_cpu": paired(by.get("miss-memory"), by.get("hit-memory"), "cpu_us"),
        "redis_hit_added_cpu_us_over_memory_hit": paired(by.get("hit-redis"), by.get("hit-memory"), "cpu_us",
                                                                difference=True),
        "memory_hit_added_p50_ms_over_floor": paired(by.get("hit-memory"), by.get("floor"), "c1_p50_ms",
                                                            difference=True),
        "redis_hit_added_p50_ms_over_floor": paired(by.get("hit-redis"), by.get("floor"), "c1_p50_ms",
                                                           difference=True),
        "proxied_miss_added_p50_ms_over_floor": paired(by.get("miss-memory"), by.get("floor"), "c1_p50_ms",
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
