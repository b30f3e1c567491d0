"""Hot path, noise-free: the gateway's instructions per request under callgrind, this tree vs git revisions.

    .venv/bin/python bench/instructions.py [--rev REV ...] [--requests 2000] [--stream] [--gateway-yaml YAML]
                                           [--mode NAME=YAML ...] [--provider-mode NAME=YAML ...]

Timings on a 2-core machine shared with other work move by more than the
few percent a change costs; instruction counts do not (callgrind counts the
same instructions for the same binary, inputs and environment, whatever else
the machine runs). For each target (the working tree, then each ``--rev``,
whose ``src/`` is taken from git) it starts ``labgate serve`` under
``valgrind --tool=callgrind`` in front of the fast fake upstream
(``bench/upstream.py``), sends 200 warm-up requests on one connection, zeroes
the counters, sends ``--requests`` more, dumps the counters, and prints the
serving process's instructions per request and its ratio to each revision.

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
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import load, machine, procs, targets

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
    results: dict[str, float] = {}
    failed = False
    try:
        procs.wait_listening(upstream_port, proc=upstream, timeout=15)
        modes = [(None, "tree", args.gateway_yaml, ""), *((rev, rev, args.gateway_yaml, "") for rev in args.rev),
                 *((None, name, f"{args.gateway_yaml}\n{yaml}", "") for name, yaml in args.mode),
                 *((None, name, args.gateway_yaml, yaml) for name, yaml in args.provider_mode)]
        sources: dict[str | None, tuple[Path, str]] = {}
        for rev, name, yaml, provider_yaml in modes:
            if rev not in sources:
                sources[rev] = targets.snapshot_labgate(REPO, work, rev=rev)
            source, what = sources[rev]
            try:
                results[name] = _count(args, source, place, work, name, yaml,
                                       f"http://127.0.0.1:{upstream_port}", provider_yaml)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                print(f"bench: {name}: {exc}", file=sys.stderr)
                failed = True
                continue
            print(f"bench: {name:12} {results[name]:>12,.0f} instructions/request  ({what})", flush=True)
    finally:
        procs.stop(upstream)
    kind = "streamed" if args.stream else "non-streamed"
    print(f"\nthe serving process's instructions per {kind} chat request (callgrind, {args.requests} requests)")
    tree = results.get("tree")
    for name, value in results.items():
        ratio = f"{name} ÷ tree = {value / tree:.4f}" if tree and name != "tree" else ""
        print(f"  {name:12} {value:>12,.0f}   {ratio}")
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
    return p.parse_args(argv)


def _mode(text: str) -> tuple[str, str]:
    name, sep, yaml = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=YAML, got {text!r}")
    return name, yaml.replace("\\n", "\n")


def _count(args: argparse.Namespace, source: Path, place: machine.Placement, work: Path, name: str, yaml: str,
           upstream: str, provider_yaml: str = "") -> float:
    safe = name.replace("/", "_").replace("@", "-")
    port = procs.free_port()
    config = work / f"config-{safe}"
    targets.write_labgate_config(config, upstream=upstream, port=port, extra=yaml, provider_extra=provider_yaml)
    out = work / f"callgrind-{safe}"
    env = {**os.environ, "LABGATE_BENCH_KEY": targets.LABGATE_KEY,
           "LABGATE_BENCH_UPSTREAM_KEY": targets.UPSTREAM_KEY, "LABGATE_DATA_DIR": str(work / f"data-{safe}"),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(source), os.environ.get("PYTHONPATH"))))}
    proc = procs.spawn(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                        sys.executable, "-m", "labgate", "serve", "--config", str(config)],
                       cores=place.gateway, log=work / f"gateway-{safe}.log", env=env)
    try:
        procs.wait_listening(port, proc=proc, timeout=240)
        _sequential(port, 200, stream=args.stream)  # warm-up: code paths taken, connections pooled
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        _sequential(port, args.requests, stream=args.stream)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        time.sleep(1)
    finally:
        procs.stop(proc, grace=60)
    dumps = sorted(work.glob(f"callgrind-{safe}.{proc.pid}.*"))
    if not dumps:
        raise RuntimeError(f"no callgrind dump for {name} (see {work / f'gateway-{safe}.log'})")
    totals = [int(line.split()[1]) for line in dumps[-1].read_text().splitlines() if line.startswith("totals:")]
    return totals[0] / args.requests


def _sequential(port: int, n: int, *, stream: bool) -> None:
    body = load.body("bench", stream=stream).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(n):
            conn.request("POST", "/v1/chat/completions", body,
                         {"content-type": "application/json", "authorization": f"Bearer {targets.LABGATE_KEY}"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"the gateway answered {answer.status}")
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
