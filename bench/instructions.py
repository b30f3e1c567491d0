"""Hot path, noise-free: the gateway's instructions per request under callgrind, this tree vs git revisions.

    .venv/bin/python bench/instructions.py [--rev REV ...] [--requests 2000] [--stream] [--gateway-yaml YAML]
                                           [--mode NAME=YAML ...] [--provider-mode NAME=YAML ...]
                                           [--rounds N] [--jobs J] [--count-timers]
    .venv/bin/python bench/instructions.py --limits [--rev REV ...]   # keys + limits + budgets + cost off vs on

Timings on a 2-core machine shared with other work move by more than the
few percent a change costs; instruction counts do not (callgrind counts the
same instructions for the same binary, inputs and environment, whatever else
the machine runs). For each target (the working tree, then each ``--rev``,
whose ``src/`` is taken from git) it starts ``labgate serve`` under
``valgrind --tool=callgrind`` in front of the fast fake upstream
(``bench/upstream.py``), sends 200 warm-up requests on one connection, zeroes
the counters, sends ``--requests`` more, dumps the counters, and prints the
serving process's instructions per request and its ratio to each revision.

What is counted is the work requests cause, not the work time causes. Under
callgrind a request takes ~50x its wall time, so work that runs per second
(the virtual-key refresh, the config watcher, the connection timers, the
access-log and history flushes that batch by time) would be charged to the
few requests that fit in each second, and by how busy the machine happened to
be. So (unless ``--count-timers``) the gateway runs with
``--toggle-collect=uv__run_timers`` (nothing a timer callback does is
counted; at real load the flushes go by size and cost next to nothing per
request) and, where the revision has it, ``auth.keys_refresh_s: 60`` (the
key table is otherwise re-read every 0.5 s in a thread); before the requests
it idles for ``--idle`` seconds to measure the remaining background work per
second (task wake-ups after ``asyncio.sleep``), which is subtracted for the
requests' wall time. With
``--rounds N`` every target is measured N times, the targets interleaved
(tree, revs, modes, then again), and the median is reported with the spread
((max - min) / median) of each target's rounds: the noise figure.

The config is the gateway benchmark's (one ``openai_compatible`` provider,
auth on, access log on, history in SQLite with the writer process, whose
instructions are its own process's and are not counted here).
``--gateway-yaml`` adds sections to every target's ``gateway.yaml`` (e.g. a
``cache:`` section). ``--mode NAME=YAML`` (repeatable) also measures the
working tree with YAML added to its ``gateway.yaml``: what a feature costs
when it is on, as a ratio to the tree without it, in the same run (``\n`` in
YAML stands for a line break). Exit status 0 when every target ran, 1 when one
failed, 2 when valgrind or the harness is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

from harness import machine, procs, targets

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench: needs valgrind (Debian package valgrind)", file=sys.stderr)
        return 2
    place = machine.placement()
    work = Path(tempfile.mkdtemp(prefix="labgate-instructions-"))
    print(f"bench: {machine.cpu_model()}, {place.cores} cores; {place.note}")
    upstream_port = procs.free_port()
    upstream = procs.spawn([sys.executable, str(BENCH / "upstream.py"), "--port", str(upstream_port)],
                           cores=place.load, log=work / "upstream.log")
    results: dict[str, list[float]] = {}
    failed = False
    try:
        procs.wait_listening(upstream_port, proc=upstream, timeout=15)
        modes = [(None, "tree", args.gateway_yaml, ""), *((rev, rev, args.gateway_yaml, "") for rev in args.rev),
                 *((None, name, f"{args.gateway_yaml}\n{yaml}", "") for name, yaml in args.mode),
                 *((None, name, args.gateway_yaml, yaml) for name, yaml in args.provider_mode)]
        if args.limits:  # bench/limits_e2e.py's off and on, for the tree and each revision
            modes = [mode for rev in (None, *args.rev) for mode in
                     ((rev, "off" + (f"@{rev}" if rev else ""), args.gateway_yaml, ""),
                      (rev, "on" + (f"@{rev}" if rev else ""), args.gateway_yaml, ""))]
        sources: dict[str | None, tuple[Path, str]] = {}
        for rev, _, _, _ in modes:
            if rev not in sources:
                sources[rev] = targets.snapshot_labgate(REPO, work, rev=rev)
        limited = _limits_setup(work, sources[None][0]) if args.limits else {}
        runs = [(round_, mode) for round_ in range(args.rounds) for mode in modes]

        def one(run: tuple[int, tuple[str | None, str, str, str]]) -> None:
            nonlocal failed
            round_, (rev, name, yaml, provider_yaml) = run
            source, what = sources[rev]
            extra, edit, key = limited.get(name.split("@")[0], ("", None, targets.LABGATE_KEY))
            try:
                value, note = _count(args, source, place, work, f"{name}.{round_}", yaml + extra,
                                     f"http://127.0.0.1:{upstream_port}", provider_yaml, edit=edit, key=key)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                print(f"bench: {name} (round {round_ + 1}): {exc}", file=sys.stderr)
                failed = True
                return
            results.setdefault(name, []).append(value)
            print(f"bench: {name:12} {value:>12,.0f} instructions/request  round {round_ + 1}, {note}  ({what})",
                  flush=True)

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(one, runs))
    finally:
        procs.stop(upstream)
    kind = "streamed" if args.stream else "non-streamed"
    counted = "timer callbacks included" if args.count_timers else "timer callbacks and idle background excluded"
    print(f"\nthe serving process's instructions per {kind} chat request (callgrind, {args.requests} requests, "
          f"{counted}; median of {args.rounds} round(s), spread = (max - min) / median)")
    tree = median(results["tree"]) if results.get("tree") else None
    for name, values in results.items():
        value = median(values)
        spread = f"spread {(max(values) - min(values)) / value:6.2%}" if len(values) > 1 else ""
        ratio = f"{name} ÷ tree = {value / tree:.4f}" if tree and name != "tree" else ""
        if name.startswith("on") and results.get("off" + name[2:]):
            ratio = f"{name} ÷ off{name[2:]} = {value / median(results['off' + name[2:]]):.4f}"
        print(f"  {name:12} {value:>12,.0f}   {spread:16} {ratio}")
    print(f"bench: logs in {work}")
    return 1 if failed or not results else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/instructions.py", description=__doc__.splitlines()[0])
    p.add_argument("--rev", action="append", default=[], help="a git revision to compare with (repeatable)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--stream", action="store_true", help="streamed chat completions instead of whole ones")
    p.add_argument("--gateway-yaml", default="", metavar="YAML", help="extra top-level sections for gateway.yaml")
    p.add_argument("--mode", action="append", default=[], type=_mode, metavar="NAME=YAML",
                   help="the working tree with YAML added to gateway.yaml, as target NAME (repeatable)")
    p.add_argument("--provider-mode", action="append", default=[], type=_mode, metavar="NAME=YAML",
                   help="the working tree with YAML lines added to its provider (e.g. "
                        "'capped=max_parallel_requests: 64'), as target NAME (repeatable)")
    p.add_argument("--limits", action="store_true",
                   help="targets 'off' and 'on' (and off@REV, on@REV per --rev) instead: bench/limits_e2e.py's "
                        "keys + limits + budgets + cost off and on (a virtual key sent by every request)")
    p.add_argument("--rounds", type=int, default=1, help="measure every target N times, interleaved; median")
    p.add_argument("--jobs", type=int, default=1, help="targets measured at once (counts do not depend on load)")
    p.add_argument("--idle", type=float, default=8.0, metavar="S",
                   help="seconds idle before the requests, to measure background work per second")
    p.add_argument("--count-timers", action="store_true",
                   help="count timer callbacks and idle background work too (the figures before the fix)")
    return p.parse_args(argv)


def _mode(text: str) -> tuple[str, str]:
    name, sep, yaml = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=YAML, got {text!r}")
    return name, yaml.replace("\\n", "\n")


def _limits_setup(work: Path, source: Path) -> dict[str, tuple[str, Callable[[Path], None] | None, str]]:
    """``--limits``: target → (gateway.yaml added, config edit, key sent), with the virtual key made once."""
    import limits_e2e

    store = work / "keys.db"
    secret = limits_e2e._create_key(source, store)
    quiet = f"store:\n  url: {store}\n  capture: none\n"
    return {"off": (quiet, limits_e2e._unkeyed, targets.LABGATE_KEY),
            "on": (quiet + limits_e2e.LIMITS, limits_e2e._priced, secret)}


def _count(args: argparse.Namespace, source: Path, place: machine.Placement, work: Path, name: str, yaml: str,
           upstream: str, provider_yaml: str = "", *, edit: Callable[[Path], None] | None = None,
           key: str = targets.LABGATE_KEY) -> tuple[float, str]:
    """Instructions per request, and a note on what was subtracted."""
    safe = name.replace("/", "_").replace("@", "-")
    port = procs.free_port()
    config = work / f"config-{safe}"
    targets.write_labgate_config(config, upstream=upstream, port=port, extra=yaml, provider_extra=provider_yaml)
    if not args.count_timers:
        _quiet_key_refresh(config / "gateway.yaml", source)
    if edit is not None:
        edit(config)
    out = work / f"callgrind-{safe}"
    env = {**os.environ, "LABGATE_BENCH_KEY": targets.LABGATE_KEY,
           "LABGATE_BENCH_UPSTREAM_KEY": targets.UPSTREAM_KEY, "LABGATE_DATA_DIR": str(work / f"data-{safe}"),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(source), os.environ.get("PYTHONPATH"))))}
    # --toggle-collect alone would also turn collection off at start: it is turned on again after it
    toggle = [] if args.count_timers else ["--toggle-collect=uv__run_timers", "--collect-atstart=yes"]
    proc = procs.spawn(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *toggle,
                        sys.executable, "-m", "labgate", "serve", "--config", str(config)],
                       cores=place.gateway, log=work / f"gateway-{safe}.log", env=env)
    control = ["callgrind_control"]
    try:
        procs.wait_listening(port, proc=proc, timeout=240)
        targets.sequential(port, 200, stream=args.stream, key=key)  # warm-up: code paths taken, connections pooled
        idle = 0.0
        idled = not args.count_timers and args.idle > 0  # dump 1 is the idle period, dump 2 the requests
        if idled:
            subprocess.run([*control, "-z", str(proc.pid)], capture_output=True, check=True)
            started = time.monotonic()
            time.sleep(args.idle)
            subprocess.run([*control, "-d", str(proc.pid)], capture_output=True, check=True)
            idle = _last_total(work, safe, proc.pid, part=1) / (time.monotonic() - started)
        subprocess.run([*control, "-z", str(proc.pid)], capture_output=True, check=True)
        started = time.monotonic()
        targets.sequential(port, args.requests, stream=args.stream, key=key)
        elapsed = time.monotonic() - started
        subprocess.run([*control, "-d", str(proc.pid)], capture_output=True, check=True)
        time.sleep(1)
    finally:
        procs.stop(proc, grace=60)
    total = _last_total(work, safe, proc.pid, part=2 if idled else 1)
    background = idle * elapsed
    note = (f"background {idle:,.0f}/s x {elapsed:.0f} s = {background / args.requests:,.0f}/request subtracted"
            if idled else "nothing subtracted")
    return (total - background) / args.requests, note


def _quiet_key_refresh(gateway_yaml: Path, source: Path) -> None:
    """``auth.keys_refresh_s: 60`` (its maximum) where the revision has it (once a key file exists, every
    process re-reads the key table every 0.5 s in an executor thread): per-second work like the timers',
    which the idle subtraction misses in part (the thread's turns for the GIL cost more while requests
    run than while the loop sleeps). Revisions without the setting run as they are."""
    schema = source / "labgate" / "config" / "schema" / "gateway.py"
    if not schema.exists() or "keys_refresh_s" not in schema.read_text():
        return
    text = gateway_yaml.read_text()
    marker = "auth:\n  master_key_env: LABGATE_BENCH_KEY\n"
    if marker in text:
        gateway_yaml.write_text(text.replace(marker, marker + "  keys_refresh_s: 60\n"))


def _last_total(work: Path, safe: str, pid: int, *, part: int) -> int:
    """The instructions counted in dump ``part``: its ``summary:`` (what ``callgrind_annotate`` calls the
    program's total, and what its inclusive costs add up to). Not ``totals:``, the sum of the functions'
    own costs, which exceeds it by an amount that varies from run to run (with collection toggled off in
    the timers: by more than those cost)."""
    dump = work / f"callgrind-{safe}.{pid}.{part}"
    for _ in range(30):  # callgrind_control -d returns before the file is complete
        if dump.exists():
            text = dump.read_text()
            summary = [int(line.split()[1]) for line in text.splitlines() if line.startswith("summary:")]
            if summary and "\ntotals:" in text:
                return summary[0]
        time.sleep(0.5)
    raise RuntimeError(f"no callgrind dump {dump.name} (see {work / f'gateway-{safe}.log'})")


if __name__ == "__main__":
    sys.exit(main())
