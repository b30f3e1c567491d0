"""Where the hot path's instructions go, per Python function: bytecodes executed per request, two revisions.

    .venv/bin/python bench/opcodes.py [--rev 7a6d369] [--requests 300] [--top 60] [--gateway-yaml YAML]
    .venv/bin/python bench/opcodes.py --limits      # keys + limits + budgets + cost on vs off, this tree

Callgrind (``bench/instructions.py``) counts a request's machine instructions
but cannot name the Python function that spent them: they all run in the
interpreter's one eval loop. This tool names them. It serves the working tree
and ``--rev`` (in turn, with the instructions benchmark's config: auth, access
log, SQLite history) with a ``sys.settrace`` hook that counts every bytecode
(``f_trace_opcodes``) and every call per code object, switched on (SIGUSR1)
after 300 warm-up requests and off (SIGUSR2) after ``--requests`` more. The
counts are exact and do not depend on load; tracing makes the process ~100x
slower, so only counts are reported, never times. It prints, per function,
bytecodes and calls per request in both, sorted by the difference. (On
CPython 3.11 one bytecode is ~20 instructions on average, a Python call ~300
more: callgrind's ``_PyEval_EvalFrameDefault`` self cost is ~19 instructions
per bytecode counted here.) Background work (timers, the key refresh) shows up
too, as fractions of a call per request.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import procs, targets

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# Run as the served process: count bytecodes per code object between SIGUSR1 and SIGUSR2.
_TRACED = '''
import collections, os, pickle, signal, sys
ops, calls = collections.Counter(), collections.Counter()
def local(frame, event, arg):
    if event == "opcode":
        ops[frame.f_code] += 1
    return local
def start(frame, event, arg):
    frame.f_trace_opcodes = True
    calls[frame.f_code] += 1
    return local
def on(*_):
    sys.settrace(start)
def off(*_):
    sys.settrace(None)
    out = {}
    for code, n in ops.items():
        key = (code.co_filename, code.co_name)
        had = out.get(key, (0, 0))
        out[key] = (had[0] + n, had[1] + calls[code])
    with open(os.environ["LABGATE_OPCODES_OUT"], "wb") as f:
        pickle.dump(out, f)
signal.signal(signal.SIGUSR1, on)
signal.signal(signal.SIGUSR2, off)
from labgate.cli.main import main
sys.exit(main(sys.argv[1:]))
'''


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/opcodes.py", description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="7a6d369", help="the revision to compare the working tree with")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--top", type=int, default=60)
    p.add_argument("--gateway-yaml", default="", metavar="YAML")
    p.add_argument("--limits", action="store_true",
                   help="compare the working tree with keys + limits + budgets + cost on (bench/limits_e2e.py's "
                        "'on') against the same tree with them off, instead of with --rev")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="labgate-opcodes-"))
    (work / "traced.py").write_text(_TRACED)
    upstream_port = procs.free_port()
    upstream = subprocess.Popen([sys.executable, str(BENCH / "upstream.py"), "--port", str(upstream_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts = {}
    try:
        procs.wait_listening(upstream_port, proc=upstream, timeout=15)
        if args.limits:
            import limits_e2e

            source, what = targets.snapshot_labgate(REPO, work, rev=None)
            secret = limits_e2e._create_key(source, work / "keys.db")
            quiet = f"store:\n  url: {work / 'keys.db'}\n  capture: none\n"
            args.rev = "off"
            for name, extra, edit, key in (("on", quiet + limits_e2e.LIMITS, limits_e2e._priced, secret),
                                           ("off", quiet, limits_e2e._unkeyed, targets.LABGATE_KEY)):
                counts[name] = _count(args, work, name, source, f"http://127.0.0.1:{upstream_port}",
                                      extra=extra, edit=edit, key=key)
            print(f"bench: on vs off: {what}", flush=True)
        else:
            for name, rev in (("tree", None), (args.rev, args.rev)):
                source, what = targets.snapshot_labgate(REPO, work, rev=rev)
                counts[name] = _count(args, work, name, source, f"http://127.0.0.1:{upstream_port}")
                print(f"bench: {name}: {what}", flush=True)
    finally:
        upstream.terminate()
        upstream.wait(10)
    _report(counts["on" if args.limits else "tree"], counts[args.rev], args)
    print(f"bench: logs in {work}")
    return 0


def _count(args: argparse.Namespace, work: Path, name: str, source: Path, upstream: str, *, extra: str = "",
           edit: Callable[[Path], None] | None = None, key: str = targets.LABGATE_KEY) -> dict[str, list[float]]:
    port = procs.free_port()
    config = work / f"config-{name}"
    targets.write_labgate_config(config, upstream=upstream, port=port, extra=args.gateway_yaml + extra)
    if edit is not None:
        edit(config)
    out = work / f"opcodes-{name}.pickle"
    env = {**os.environ, "LABGATE_BENCH_KEY": targets.LABGATE_KEY, "LABGATE_BENCH_UPSTREAM_KEY": targets.UPSTREAM_KEY,
           "LABGATE_DATA_DIR": str(work / f"data-{name}"), "PYTHONPATH": str(source),
           "LABGATE_OPCODES_OUT": str(out)}
    with (work / f"gateway-{name}.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(work / "traced.py"), "serve", "--config", str(config)],
                                env=env, stdout=log, stderr=log)
        try:
            procs.wait_listening(port, proc=proc, timeout=60)
            targets.sequential(port, 300, key=key)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            targets.sequential(port, args.requests, key=key)
            proc.send_signal(signal.SIGUSR2)
            for _ in range(100):
                if out.exists() and out.stat().st_size:
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(30)
    with out.open("rb") as f:
        raw = pickle.load(f)
    merged: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for (filename, function), (ops, calls) in raw.items():
        short = re.sub(r".*/(labgate/|site-packages/|python3\.11/)", "", filename)
        merged[f"{short}:{function}"][0] += ops / args.requests
        merged[f"{short}:{function}"][1] += calls / args.requests
    return merged


def _report(tree: dict[str, list[float]], rev: dict[str, list[float]], args: argparse.Namespace) -> None:
    def total(c: dict[str, list[float]], i: int) -> float:
        return sum(v[i] for v in c.values())

    print(f"\nper request: bytecodes tree {total(tree, 0):,.0f}, {args.rev} {total(rev, 0):,.0f}; "
          f"Python calls tree {total(tree, 1):,.1f}, {args.rev} {total(rev, 1):,.1f}")
    print(f"{'bytecodes':>9} {args.rev[:9]:>9} {'diff':>7} {'calls':>6} {args.rev[:6]:>6}  function")
    zero = [0.0, 0.0]
    names = sorted(set(tree) | set(rev), key=lambda k: -abs(tree.get(k, zero)[0] - rev.get(k, zero)[0]))
    for name in names[:args.top]:
        a, b = tree.get(name, zero), rev.get(name, zero)
        print(f"{a[0]:9.1f} {b[0]:9.1f} {a[0] - b[0]:+7.1f} {a[1]:6.2f} {b[1]:6.2f}  {name}")


if __name__ == "__main__":
    sys.exit(main())
