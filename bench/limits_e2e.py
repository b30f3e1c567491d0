"""Keys + limits + budgets + cost on vs off, end to end: req/s and the gateway's CPU per request, in one run.

    .venv/bin/python bench/limits_e2e.py [--quick] [--rounds 5] [--duration 6] [--connections 16]
                                         [--redis-url URL] [--no-redis] [--json]

The end-to-end half of ``bench/limits.py`` (which times the limiter's own work per request in
process). Uses the gateway benchmark's harness: the fast fake upstream (``bench/upstream.py``) and
wrk pinned to the load core, ``labgate serve`` pinned to the gateway core; every round starts a
fresh gateway per mode, in a rotated order (interleaved rounds), and measures non-stream chat
completions at ``--connections`` (closed loop: req/s, and the gateway's CPU µs per request — user +
system time from /proc, all its threads) and at one connection (p50 of one request). Modes:

    off     master-key auth, no virtual keys (``auth.virtual_keys: false``), no limits, no budgets,
            the model unpriced
    on      a virtual key (rpm, tpm, a monthly budget) sent by every request, gateway and model rpm/tpm
            (``rate_limits:``), a global and a model budget (``budgets:``), the model priced: per request
            the key lookup, one take of 7 charges and its settlement on the in-process counters, the cost
    off@REV, on@REV   with ``--base-rev REV``: ``off`` and ``on`` run from that git revision's ``src/``, in the
            same rounds: the on/off ratios before and after a change, measured together
    redis   ``on`` with ``state.url`` (--redis-url): the same charges in Redis (one script call to take,
            one to settle); a fresh namespace, deleted at the end

History is off in every mode (``store: {capture: none}``; the key lives in its SQLite file). Prints
per mode the median req/s (min–max) and CPU µs/request, then the medians of per-round ratios: on vs
off (req/s and CPU), and what Redis adds over ``on`` (CPU µs/request, c=1 p50). Timing is never
pass/fail: exit status 0 when every leg ran, 1 when one failed, 2 when the harness could not start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

from harness import targets
from harness.modes import Mode, check_redis, flush_redis, paired, run

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LIMITS = ("rate_limits:\n  rpm: 1000000000\n  tpm: 1000000000000\n  models:\n    bench: {rpm: 1000000000}\n"
          "budgets:\n  limits:\n    - {scope: global, limit_usd: 1000000000000, period: month}\n"
          "    - {scope: model, name: bench, limit_usd: 1000000000000, period: day}\n")
PRICING = "    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}\n"  # provider-level: every model priced


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    cleanup = None if args.no_redis else lambda: flush_redis(args.redis_url, f"labgate:{{limits:{namespace}}}:*")
    return run(args, prefix="labgate-limits-bench-", modes=lambda work: _modes(args, work, namespace),
               report=lambda modes: _report(modes, args), cleanup=cleanup)


def _modes(args: argparse.Namespace, work: Path, namespace: str) -> list[Mode]:
    tree, what = targets.snapshot_labgate(REPO, work, rev=None)
    print(f"bench: labgate under test: {what}", file=sys.stderr)
    store = work / "keys.db"
    secret = _create_key(tree, store)
    quiet = f"store:\n  url: {store}\n  capture: none\n"
    data = {"LABGATE_DATA_DIR": str(work / "data")}
    keyed = (f"authorization: Bearer {secret}",)
    modes = [Mode("off", quiet, tree, edit_config=_unkeyed, env=data),
             Mode("on", quiet + LIMITS, tree, headers=keyed, edit_config=_priced, env=data)]
    if args.base_rev:
        base, base_what = targets.snapshot_labgate(REPO, work, rev=args.base_rev)
        print(f"bench: base: {base_what}", file=sys.stderr)
        modes += [Mode(f"off@{args.base_rev}", quiet, base, edit_config=_unkeyed, env=data),
                  Mode(f"on@{args.base_rev}", quiet + LIMITS, base, headers=keyed, edit_config=_priced, env=data)]
    if not args.no_redis:
        check_redis(args.redis_url)
        modes.append(Mode("redis", quiet + LIMITS.replace("rate_limits:\n", f"rate_limits:\n  namespace: {namespace}\n")
                          + f"state:\n  url: {args.redis_url}\n", tree, headers=keyed, edit_config=_priced, env=data))
    return modes


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/limits_e2e.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke: 1 round, 2 s legs")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=6, help="seconds of the c=N leg (the c=1 leg: half)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    p.add_argument("--no-redis", action="store_true", help="skip the Redis mode")
    p.add_argument("--base-rev", metavar="REV", help="also measure off and on from this git revision (before/after)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    return args


def _create_key(source: Path, store: Path) -> str:
    """A virtual key with rpm, tpm and a budget, made with ``labgate keys create``; its secret."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(source), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run([*targets.labgate_command(), "keys", "create", "bench", "--store", str(store),
                           "--rpm", "1000000000", "--tpm", "1000000000000", "--budget", "1000000000000",
                           "--json"], capture_output=True, text=True, env=env, check=False, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"bench: labgate keys create failed: {done.stderr.strip()}")
    import orjson

    doc = orjson.loads(done.stdout)
    secret = doc.get("key") or doc.get("secret")
    if not isinstance(secret, str):
        raise SystemExit(f"bench: no key in the output of labgate keys create: {sorted(doc)}")
    return secret


def _unkeyed(config: Path) -> None:
    """``off``: no virtual keys (the auth section is the harness's)."""
    gateway = config / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("auth:\n", "auth:\n  virtual_keys: false\n", 1))


def _priced(config: Path) -> None:
    """``on``, ``redis``: the model priced, so cost estimates and settlements are real numbers."""
    providers = config / "providers.yaml"
    providers.write_text(providers.read_text() + PRICING)


def _report(modes: list[Mode], args: argparse.Namespace) -> None:
    by = {m.name: m for m in modes}
    ratios = {
        "on_vs_off_rps": paired(by.get("on"), by.get("off"), "rps"),
        "on_vs_off_cpu": paired(by.get("off"), by.get("on"), "cpu_us"),
        "on_added_cpu_us": paired(by.get("on"), by.get("off"), "cpu_us", difference=True),
        "redis_added_cpu_us_over_on": paired(by.get("redis"), by.get("on"), "cpu_us", difference=True),
        "redis_added_p50_ms_over_on": paired(by.get("redis"), by.get("on"), "c1_p50_ms", difference=True),
    }
    if args.base_rev:
        off, on = by.get(f"off@{args.base_rev}"), by.get(f"on@{args.base_rev}")
        ratios["base_on_vs_off_rps"] = paired(on, off, "rps")
        ratios["base_on_vs_off_cpu"] = paired(off, on, "cpu_us")
        ratios["base_on_added_cpu_us"] = paired(on, off, "cpu_us", difference=True)
    if args.json:
        import orjson

        doc = {"modes": {m.name: {"rps": m.rps, "cpu_us": m.cpu_us, "c1_p50_ms": m.c1_p50_ms} for m in modes},
               "ratios": ratios}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    width = max(8, *(len(m.name) for m in modes))
    lines = [f"{'mode':<{width}} {'req/s (c=' + str(args.connections) + ')':>22} {'CPU µs/req':>12} {'c=1 p50 ms':>11}"]
    for m in modes:
        if not m.rps:
            lines.append(f"{m.name:<{width}} {'—':>22}")
            continue
        spread = f"{statistics.median(m.rps):,.0f} ({min(m.rps):,.0f}–{max(m.rps):,.0f})"
        lines.append(f"{m.name:<{width}} {spread:>22} {statistics.median(m.cpu_us):12.1f} "
                     f"{statistics.median(m.c1_p50_ms):11.3f}")
    labels = {"on_vs_off_rps": ("keys+limits+budgets+cost on vs off, req/s ×", "{:.3f}"),
              "on_vs_off_cpu": ("on vs off, by CPU/request: off ÷ on", "{:.3f}"),
              "on_added_cpu_us": ("on: gateway CPU added over off, µs/request", "{:+.1f}"),
              "redis_added_cpu_us_over_on": ("Redis: gateway CPU added over in-process, µs/request", "{:+.1f}"),
              "redis_added_p50_ms_over_on": ("Redis: p50 added over in-process (c=1), ms", "{:+.3f}"),
              "base_on_vs_off_rps": (f"{args.base_rev}: on vs off, req/s ×", "{:.3f}"),
              "base_on_vs_off_cpu": (f"{args.base_rev}: on vs off, by CPU/request: off ÷ on", "{:.3f}"),
              "base_on_added_cpu_us": (f"{args.base_rev}: gateway CPU added over off, µs/request", "{:+.1f}")}
    lines.append("")
    for key, value in ratios.items():
        label, fmt = labels[key]
        lines.append(f"{label:<56} {'—' if value is None else fmt.format(value)}")
    lines.append("(medians of per-round values; CPU = user + system time of the serving process, from /proc)")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
