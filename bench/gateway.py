"""Gateway benchmark: labgate vs the bare upstream (and optional peers), as ratios measured in one run.

    .venv/bin/python bench/gateway.py [--quick] [--rounds 5] [--duration 10] [--concurrency 16]
                                      [--peers litellm,portkey] [--json] [--soak 600] [--profile]

Starts the fast fake upstream (``bench/upstream.py``) and labgate with a
generated config (one ``openai_compatible`` provider, auth on, the access log
on stdout redirected to a file), pins labgate to one core and the upstream and
the load generators to another, then runs interleaved rounds: in every round
each target (direct upstream, labgate, each peer) is started fresh (cold
start, idle RSS) and measured with the same legs:

1. non-stream chat completions, wrk, 16 connections (req/s, CPU µs/request,
   latency p50/p90/p99), after a wrk warm-up;
2. the same at 1 connection, half as long (latency of one request on an idle path);
3. burst streams: 20 content chunks written back to back (streams/s, TTFB);
4. paced streams: 20 content chunks 5 ms apart, half as long (TTFB p50/p99).

Then it prints, per metric, the median of the rounds with the min–max
spread, and ratios (labgate vs direct, labgate vs each peer) as medians of
per-round ratios. Timing is never pass/fail: the exit status is 0 when every
leg ran and produced numbers, 1 when a leg failed, 2 when the harness could
not start. See bench/RESULTS.md for a full run and how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import httptools  # noqa: F401  (the upstream and the stream client need these)
    import orjson
    import uvloop  # noqa: F401
except ImportError as missing:
    raise SystemExit(f"bench: {missing.name} is missing — run with the project's venv: "
                     f".venv/bin/python {' '.join(sys.argv)}") from None

from harness import legs, load, machine, procs, report, targets
from harness.targets import Peer, Running

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS = ("litellm", "portkey")


@dataclass(frozen=True, slots=True)
class Run:
    """What every part of one benchmark run shares."""

    args: argparse.Namespace
    workdir: Path
    place: machine.Placement
    upstream_url: str
    sources: dict[str, Path]  # labgate target name → its src/ snapshot

    def start_labgate(self, tag: str, name: str = "labgate") -> Running:
        return targets.start_labgate(self.workdir, upstream=self.upstream_url, cores=self.place.gateway, tag=tag,
                                     helper_cores=self.place.load,
                                     source=self.sources[name], name=name, extra_yaml=self.args.gateway_yaml)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if load.wrk_path() is None:
        print(f"bench: {load.WRK_MISSING}", file=sys.stderr)
        return 2
    place = machine.placement()
    header = _header(place, args)
    print("\n".join(header), file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="labgate-bench-"))
    keep = args.keep
    upstream: subprocess.Popen[bytes] | None = None
    try:
        sources: dict[str, Path] = {}  # labgate target name → the src/ snapshot it runs
        for name, rev in [("labgate", args.labgate_rev), *((f"labgate@{r}", r) for r in args.compare_rev)]:
            sources[name], what = targets.snapshot_labgate(REPO, workdir, rev=rev)
            header.append(f"{'labgate under test' if name == 'labgate' else name}: {what}")
            print(header[-1], file=sys.stderr)
        upstream, direct = _start_upstream(workdir, place)
        run = Run(args, workdir, place, direct.target.url.removesuffix("/v1/chat/completions"), sources)
        if args.soak:
            return _soak(run)
        peers = _install_peers(args, workdir)
        results = _rounds(run, direct, peers)
        profile = _profile(run) if args.profile else []
        keep = keep or bool(results["failures"])
        _print(results, header, args)
        if profile:
            print("\n".join(profile))
        # a peer that fails is reported, never fatal: peers are optional
        return 1 if results["labgate_failed"] else 0
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        keep = True
        return 2
    finally:
        if upstream is not None:
            procs.stop(upstream)
        if keep:
            print(f"bench: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: 1 round, 2 s legs, no peers; checks that every leg runs")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=10, help="seconds of the c=16 and burst legs (others: half)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--peers", default="", help=f"comma-separated, any of: {', '.join(PEERS)}")
    p.add_argument("--litellm-spec", default="litellm[proxy]", help="what pip installs for the LiteLLM peer")
    p.add_argument("--portkey-spec", default="@portkey-ai/gateway", help="what npm installs for the Portkey peer")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "labgate-bench", help="where peers are installed (reused between runs)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--soak", type=int, metavar="SECONDS",
                   help="instead of rounds: labgate at steady load for SECONDS, RSS every --soak-every s")
    p.add_argument("--soak-every", type=int, default=30)
    p.add_argument("--profile", action="store_true",
                   help="after the rounds, sample labgate under c=16 load with py-spy; print the top 15 functions")
    p.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy executable (default: on PATH)")
    p.add_argument("--labgate-rev", metavar="REV",
                   help="run labgate's src/ from this git revision (default: a snapshot of the working tree)")
    p.add_argument("--compare-rev", metavar="REV", action="append", default=[],
                   help="also measure labgate from this git revision, as target labgate@REV (repeatable)")
    p.add_argument("--gateway-yaml", default="", metavar="YAML",
                   help="extra top-level sections for labgate's generated gateway.yaml, "
                        "e.g. 'store: {capture: metadata}'")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.peers = 1, 2, ""
    unknown = {n for n in args.peers.split(",") if n} - set(PEERS)
    if unknown:
        p.error(f"unknown peer(s): {', '.join(sorted(unknown))}; known: {', '.join(PEERS)}")
    return args


def _header(place: machine.Placement, args: argparse.Namespace) -> list[str]:
    load1, load5, load15 = machine.load_average()
    lines = [f"labgate bench — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
             f"machine: {os.cpu_count()} cores, {machine.cpu_model()}; python {sys.version.split()[0]}; "
             f"labgate {_labgate_version()}",
             f"load average before: {load1:.2f} {load5:.2f} {load15:.2f}",
             f"placement: {place.note}",
             (f"plan: soak {args.soak} s at c={args.concurrency}, RSS every {args.soak_every} s" if args.soak else
              f"plan: {args.rounds} round(s), {args.duration} s legs, c={args.concurrency}")]
    if args.gateway_yaml:
        lines.append(f"labgate gateway.yaml extra: {args.gateway_yaml}")
    if load1 >= 0.5 * place.cores or load1 >= 1.0:
        lines.append(f"WARNING: load average {load1:.2f} is high — other processes share these cores; "
                     "the 'other CPU on gateway core' row shows how much they took during the c=16 legs")
    if place.gateway == place.load:
        lines.append(f"WARNING: {place.note}")
    return lines


def _labgate_version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("labgate")
    except Exception:
        return "?"


def _start_upstream(workdir: Path, place: machine.Placement) -> tuple[subprocess.Popen[bytes], Running]:
    port = procs.free_port()
    url = f"http://127.0.0.1:{port}"
    target = load.Target(f"{url}/v1/chat/completions", ())
    running = targets.start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)],
                            port=port, target=target, cores=place.load, log=workdir / "upstream.log", timeout=15)
    assert running.proc is not None
    return running.proc, Running("direct", target, running.pid, None, running.cold_start_ms)


def _install_peers(args: argparse.Namespace, workdir: Path) -> dict[str, Peer]:
    installers: dict[str, Callable[[], Peer]] = {
        "litellm": lambda: targets.install_litellm(args.cache, spec=args.litellm_spec, log=workdir / "install.log"),
        "portkey": lambda: targets.install_portkey(args.cache, spec=args.portkey_spec, log=workdir / "install.log"),
    }
    found: dict[str, Peer] = {}
    for name in [n for n in args.peers.split(",") if n]:
        try:
            peer = installers[name]()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"bench: peer {name} is not available, continuing without it: {exc}", file=sys.stderr)
            continue
        print(f"bench: peer {name} {peer.version} from {peer.home}", file=sys.stderr)
        found[name] = peer
    return found


def _plan(args: argparse.Namespace) -> legs.Plan:
    if args.quick:
        return legs.Plan(seconds=args.duration, warmup=1, stream_warmup=0.3, idle_pause=0.2,
                         connections=args.concurrency)
    return legs.Plan(seconds=args.duration, warmup=2, stream_warmup=1.0, idle_pause=1.0,
                     connections=args.concurrency)


def _rounds(run: Run, direct: Running, peers: dict[str, Peer]) -> dict[str, object]:
    args, workdir, place, upstream_url = run.args, run.workdir, run.place, run.upstream_url
    plan = _plan(args)
    starters: dict[str, Callable[[str], Running]] = {
        name: functools.partial(run.start_labgate, name=name) for name in run.sources}
    if "litellm" in peers:
        starters["litellm"] = lambda tag: targets.start_litellm(peers["litellm"], workdir, upstream=upstream_url,
                                                                cores=place.gateway, tag=tag)
    if "portkey" in peers:
        starters["portkey"] = lambda tag: targets.start_portkey(peers["portkey"], workdir, upstream=upstream_url,
                                                                cores=place.gateway, tag=tag)
    names = ["direct", *starters]
    rounds: list[dict[str, dict[str, float]]] = []
    failures: list[str] = []
    labgate_failed = False  # a leg of direct or labgate failed
    started = time.monotonic()
    for number in range(1, args.rounds + 1):
        this: dict[str, dict[str, float]] = {}
        for name in names:
            tag = f"round {number}/{args.rounds}"
            try:
                running = direct if name == "direct" else starters[name](f"r{number}")
            except RuntimeError as exc:
                failures.append(f"{tag}: {exc}")
                labgate_failed = labgate_failed or name not in peers
                print(f"bench: {tag}: {exc}", file=sys.stderr)
                continue
            try:
                outcome = legs.measure(running, plan=plan, placement=place, upstream_pid=direct.pid,
                                       direct=this.get("direct") if name != "direct" else None)
            except OSError as exc:  # the process vanished under /proc
                outcome = legs.Outcome(failures=[f"{name}: {exc}"])
            finally:
                if running.proc is not None:
                    procs.stop(running.proc)
            this[name] = outcome.metrics
            failures += [f"{tag}: {f}" for f in outcome.failures]
            labgate_failed = labgate_failed or bool(outcome.failures and name not in peers)
            for f in outcome.failures:
                print(f"bench: {tag}: {f}", file=sys.stderr)
            m = outcome.metrics
            print(f"bench: {tag} {name}: {m.get('rps', 0):,.0f} req/s, {m.get('cpu_us', 0):,.0f} µs CPU/req, "
                  f"p50 {m.get('p50_ms', 0):.2f} ms, {m.get('burst_sps', 0):,.0f} burst streams/s, "
                  f"paced TTFB {m.get('paced_ttfb_p50_ms', 0):.2f} ms", file=sys.stderr)
        rounds.append(this)
    summary = report.summarize(rounds, names)
    ratios = report.ratios(rounds, "labgate", [n for n in names if n != "labgate"])
    versions = {name: peer.version for name, peer in peers.items()}
    return {"targets": names, "rounds": rounds, "summary": summary, "ratios": ratios, "failures": failures,
            "labgate_failed": labgate_failed,
            "peer_versions": versions, "seconds": round(time.monotonic() - started, 1)}


def _print(results: dict[str, object], header: list[str], args: argparse.Namespace) -> None:
    load1, load5, load15 = machine.load_average()
    footer = f"load average after: {load1:.2f} {load5:.2f} {load15:.2f}; took {results['seconds']} s"
    if args.json:
        doc = {"header": header, "footer": footer, **results}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    names: list[str] = results["targets"]  # type: ignore[assignment]
    versions: dict[str, str] = results["peer_versions"]  # type: ignore[assignment]
    lines = [*header, ""]
    lines.append(report.table(results["summary"], names))  # type: ignore[arg-type]
    lines.append("")
    lines += report.ratio_lines("labgate", results["ratios"])  # type: ignore[arg-type]
    lines.append("")
    if versions:
        lines.append("peers: " + ", ".join(f"{n} {v}" for n, v in versions.items()))
    lines.append("direct: the bench upstream alone (its CPU/request; it shares the load core with the load "
                 "generator). 'added' rows: target minus direct, same round.")
    lines.append(footer)
    failures: list[str] = results["failures"]  # type: ignore[assignment]
    if failures:
        lines.append(f"FAILED LEGS ({len(failures)}):")
        lines += [f"  {f}" for f in failures]
    print("\n".join(lines))


def _soak(run: Run) -> int:
    """labgate at steady c=16 load for --soak seconds; RSS every --soak-every seconds; drift in %."""
    args, place = run.args, run.place
    running = run.start_labgate("soak")
    assert running.proc is not None
    samples: list[tuple[float, float]] = [(0.0, procs.tree_rss_mb(running.pid))]
    print(f"bench: soak {args.soak} s at c={args.concurrency}; idle RSS {samples[0][1]:.1f} MB", file=sys.stderr)
    try:
        wrk = load.wrk_start(running.target, connections=args.concurrency, seconds=args.soak, cores=place.load)
        started = time.monotonic()
        while wrk.poll() is None:
            wake = started + args.soak_every * len(samples)
            while wrk.poll() is None and time.monotonic() < wake:
                time.sleep(0.2)
            if wrk.poll() is None:
                samples.append((time.monotonic() - started, procs.tree_rss_mb(running.pid)))
                print(f"bench: soak t={samples[-1][0]:5.0f} s RSS {samples[-1][1]:.1f} MB", file=sys.stderr)
        result = load.wrk_finish(wrk, timeout=30)
        if time.monotonic() - started - samples[-1][0] > 1:
            samples.append((time.monotonic() - started, procs.tree_rss_mb(running.pid)))
    finally:
        procs.stop(running.proc)
    loaded = samples[1:]
    first, last = loaded[0][1], loaded[-1][1]
    drift = (last - first) / first * 100
    peak = max(rss for _, rss in loaded)
    # warm-up growth (pools, caches, allocator arenas) happens early; a leak keeps growing late
    late = [rss for t, rss in loaded if t >= samples[-1][0] / 2]
    late_drift = (late[-1] - late[0]) / late[0] * 100 if late else 0.0
    lines = [f"soak: {args.soak} s at c={args.concurrency}: {result.rps:,.0f} req/s, "
             f"{result.status_errors} error answers, {result.errors} socket errors",
             "t (s)   RSS (MB)", *(f"{t:6.0f}   {rss:8.1f}" for t, rss in samples),
             f"RSS drift from the first loaded sample to the last: {drift:+.1f}%; over the second half: "
             f"{late_drift:+.1f}% (peak {peak:.1f} MB; idle {samples[0][1]:.1f} MB)"]
    if args.json:
        sys.stdout.write(orjson.dumps({"soak_s": args.soak, "rps": result.rps, "samples": samples,
                                       "drift_pct": drift, "second_half_drift_pct": late_drift}).decode() + "\n")
    else:
        print("\n".join(lines))
    return 1 if result.status_errors or result.requests == 0 else 0


def _profile(run: Run) -> list[str]:
    """py-spy samples labgate (own time per function, all threads) while wrk drives it at c=16."""
    args, workdir, place = run.args, run.workdir, run.place
    if not args.py_spy:
        print("bench: --profile needs py-spy (pip install py-spy, or --py-spy PATH)", file=sys.stderr)
        return []
    running = run.start_labgate("profile")
    assert running.proc is not None
    raw = workdir / "profile.txt"
    seconds = max(5, args.duration)
    try:
        load.wrk(running.target, connections=args.concurrency, seconds=2, cores=place.load)
        wrk = load.wrk_start(running.target, connections=args.concurrency, seconds=seconds + 2, cores=place.load)
        spy = subprocess.run([args.py_spy, "record", "--pid", str(running.pid), "--duration", str(seconds),
                              "--rate", "200", "--nonblocking", "--function", "--format", "raw", "-o", str(raw)],
                             capture_output=True, text=True, check=False,
                             preexec_fn=lambda: os.sched_setaffinity(0, place.load))
        result = load.wrk_finish(wrk, timeout=seconds + 30)
    finally:
        procs.stop(running.proc)
    if spy.returncode != 0 or not raw.exists():
        print(f"bench: py-spy failed: {spy.stderr.strip()[-400:]}", file=sys.stderr)
        return []
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            leaf = stack.rsplit(";", 1)[-1].strip() or "(no Python frame)"
            own[leaf] = own.get(leaf, 0) + int(count)
            total += int(count)
    lines = [f"profile: labgate at c={args.concurrency}, {result.rps:,.0f} req/s while py-spy sampled it "
             f"(--nonblocking, 200 Hz, all threads); {total} samples; top 15 functions by own time "
             "(time in C code such as uvloop's is charged to the Python frame that called it):"]
    lines += [f"  {n / total * 100:5.1f}%  {frame}" for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:15]]
    return lines


if __name__ == "__main__":
    sys.exit(main())
