"""What OpenTelemetry tracing costs: labgate's req/s and CPU µs per request with tracing off,
at 1% and at 100% sampling, against today's labgate (a git revision, default ``main``).

    .venv/bin/python bench/traces.py [--rev main] [--rounds 3] [--duration 10] [--quick]

Runs ``bench/gateway.py --json`` three times (same machine placement, each with its own
``direct`` upstream baseline): tracing off with ``--compare-rev REV`` (labgate vs today's,
paired per round), then tracing on at 1% and at 100%, exporting to an in-process OTLP/HTTP
receiver (``labgate.testing.otlp``) so the export path is real. Runs with tracing on are
set against today's through their own direct baseline:
``(labgate_on / direct_on) / (labgate@REV / direct_off)``. Targets (docs/observability.md):
off ≥ 0.98×, 1% ≥ 0.97×, 100% ≥ 0.80× of today's req/s. Prints a table; nothing passes
or fails on time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
TARGETS = {"off": 0.98, "1%": 0.97, "100%": 0.80}


def run(args: argparse.Namespace, yaml: str, *extra: str) -> dict[str, Any]:
    command = [sys.executable, str(BENCH / "gateway.py"), "--json", "--rounds", str(args.rounds),
               "--duration", str(args.duration), "--gateway-yaml", yaml, *extra]
    if args.quick:
        command.append("--quick")
    print("bench/traces:", " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, check=True)
    return orjson.loads(done.stdout)  # type: ignore[no-any-return]


def median(doc: dict[str, Any], target: str, metric: str) -> float | None:
    value = doc["summary"].get(target, {}).get(metric)
    return None if value is None else float(value["median"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="main", help="today's labgate: the git revision to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    from labgate.testing.otlp import OtlpReceiver

    rows: list[tuple[str, float | None, float | None, float | None]] = []
    with OtlpReceiver().run_in_thread() as otlp:
        off = run(args, "", "--compare-rev", args.rev)  # off is the default; today's labgate knows no tracing:
        today = f"labgate@{args.rev}"
        base_rps = median(off, today, "rps")
        base_direct = median(off, "direct", "rps")
        base_cpu = median(off, today, "cpu_us")
        rows.append(("off", median(off, "labgate", "rps"), median(off, "labgate", "cpu_us"),
                     off["ratios"].get(today, {}).get("rps", {}).get("median")))
        for label, ratio in (("1%", 0.01), ("100%", 1.0)):
            doc = run(args, f"tracing: {{enabled: true, endpoint: '{otlp.url}', sampling_ratio: {ratio}, "
                            "export_interval_s: 0.5}")
            rps, direct = median(doc, "labgate", "rps"), median(doc, "direct", "rps")
            vs_today = None
            if rps and direct and base_rps and base_direct:
                vs_today = (rps / direct) / (base_rps / base_direct)
            rows.append((label, rps, median(doc, "labgate", "cpu_us"), vs_today))
        spans = len(otlp.spans)
    print(f"today's labgate ({args.rev}): {base_rps or 0:.0f} req/s, {base_cpu or 0:.1f} CPU µs/request")
    print(f"{'tracing':8} {'req/s':>9} {'CPU µs/req':>11} {'+µs vs today':>13} {'× today':>8} {'target':>7}")
    for label, rps, cpu, ratio in rows:
        added = None if cpu is None or base_cpu is None else cpu - base_cpu
        print(f"{label:8} {rps or 0:9.0f} {cpu or 0:11.1f} {added or 0:13.1f} {ratio or 0:8.3f} "
              f"   ≥ {TARGETS[label]:.2f}")
    print(f"spans received by the OTLP receiver: {spans}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
