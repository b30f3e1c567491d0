"""History benchmark: throughput with history on (SQLite, PostgreSQL) as a ratio of history off, in one run.

    .venv/bin/python bench/history.py [--rounds 3] [--duration 10] [--connections 16] [--capture full]
                                      [--no-postgres] [--drop-check] [--rate 2000] [--drop-seconds 60]

Uses the gateway benchmark's harness (``bench/harness``): the fast fake
upstream (``bench/upstream.py``) and wrk, pinned to the load core, and
``labgate serve`` pinned to the gateway core. Each round starts a fresh
gateway per mode, in a rotated order, and measures the same leg: non-stream
chat completions, wrk closed loop, ``--connections`` connections, after a
2 s warm-up. Modes differ only in ``gateway.yaml``'s ``store:`` section:

    off       store.capture: none
    sqlite    store.url: a fresh SQLite file            (capture: --capture)
    postgres  store.url: DATABASE_URL, a fresh schema   (capture: --capture)

It prints per mode the median req/s (min–max), the gateway's CPU µs per
request (its utime+stime over the leg / requests) and the median of the
per-round ratios to ``off``; then the records the store holds against the
requests sent (every request must be there after the clean stop).

``--drop-check``: for SQLite and PostgreSQL, an open-loop load at ``--rate``
req/s for ``--drop-seconds`` s with the default ``store.queue_size``, then
the writer's ``dropped`` counter and the row count against requests answered.

History's own work runs beside the gateway, not in it: the writer process
(``store.writer: process``, the default; ``--writer thread`` keeps it in the
gateway process) is moved to the load core, and so are the PostgreSQL
backends serving labgate's sessions (``application_name`` 'labgate'), as if
the database ran on its own host; their CPU is reported apart ("+ writer":
the writer process). Timing is never pass/fail; exit status 0 when
every leg ran, 1 when one failed, 2 when the harness could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

try:
    import orjson
    import uvloop
except ImportError as missing:
    raise SystemExit(f"bench: {missing.name} is missing — run with the project's venv: "
                     f".venv/bin/python {' '.join(sys.argv)}") from None

from harness import load, machine, procs

BENCH = Path(__file__).resolve().parent
KEY = "sk-labgate-history-bench"  # a throwaway key for the benchmark only
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(slots=True)
class Leg:
    rps: float
    cpu_us: float  # the whole gateway process, per request, in the closed-loop leg
    writer_cpu_us: float  # its writer process (on the load core), per request, in the same leg
    requests: int
    errors: int
    fixed_cpu_us: float = 0.0  # at the fixed open-loop rate: the whole process, per request
    fixed_loop_us: float = 0.0  # … of which the event-loop (main) thread
    dropped: int | None = None
    stored: int | None = None
    answered: int | None = None


@dataclass(slots=True)
class Mode:
    name: str
    store: str  # the gateway.yaml store section
    count: object = None  # () -> rows in the store, or None
    url: str = ""  # PostgreSQL: the store's URL
    legs: list[Leg] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if load.wrk_path() is None:
        print(f"bench: {load.WRK_MISSING}", file=sys.stderr)
        return 2
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))  # run the finally blocks: stop what we started
    place = machine.placement()
    os.sched_setaffinity(0, place.load)  # this script's own load (drop check) stays off the gateway core
    work = Path(tempfile.mkdtemp(prefix="labgate-history-bench-"))
    print(f"bench: {machine.cpu_model()}, {place.cores} cores; {place.note}")
    put_ns, convert_ns = _put_cost_ns()
    print(f"bench: history in the gateway process, capture full: put() + its share of the batch's marshal "
          f"{put_ns:.0f} ns per record (writer process); with store.writer: thread, the conversion to a row "
          f"{convert_ns / 1000:.1f} µs more, and the SQLite insert")
    upstream_port = procs.free_port()
    upstream = procs.spawn([sys.executable, str(BENCH / "upstream.py"), "--port", str(upstream_port)],
                           cores=place.load, log=work / "upstream.log")
    schemas: list[str] = []
    try:
        procs.wait_listening(upstream_port, proc=upstream, timeout=15)
        modes = _modes(args, work, schemas)
        if args.instructions:
            return _instructions(args, modes, place, work, f"http://127.0.0.1:{upstream_port}")
        failed = _throughput(args, modes, place, work, f"http://127.0.0.1:{upstream_port}")
        _report(modes, args)
        if args.drop_check:
            failed |= _drop_check(args, modes, place, work, f"http://127.0.0.1:{upstream_port}")
    except (RuntimeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop(upstream)
        for schema in schemas:
            with contextlib.suppress(Exception):
                asyncio.run(_pg(args.database_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    print(f"bench: logs in {work}")
    return 1 if failed else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/history.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per measured leg")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--capture", choices=("full", "metadata"), default="full")
    p.add_argument("--writer", choices=("process", "thread"), default="process",
                   help="store.writer: a writer process (default) or in the gateway process")
    p.add_argument("--fixed-rate", type=int, default=2000,
                   help="req/s of the open-loop leg that compares CPU per request at equal load (0: skip it)")
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    p.add_argument("--drop-check", action="store_true", help="also run the open-loop drop check")
    p.add_argument("--instructions", type=int, metavar="N", default=0,
                   help="instead of timing: the gateway process's instructions per request under callgrind "
                        "(valgrind), N sequential requests per mode after a warm-up; noise-free")
    p.add_argument("--rate", type=int, default=2000, help="drop check: requests per second")
    p.add_argument("--drop-seconds", type=int, default=60, help="drop check: seconds")
    return p.parse_args(argv)


def _put_cost_ns() -> tuple[float, float]:
    """What history adds to a request in the gateway process, measured here on a typical record, for the
    default writer process: ``put`` (``wire``: a tuple of references) plus its share of the batch's
    ``marshal.dumps``; and, for ``store.writer: thread``, the conversion to a row done in the process."""
    import marshal

    import orjson

    from labgate.providers.base import Usage
    from labgate.record import RequestRecord
    from labgate.store.capture import build_row
    from labgate.store.process import WriterProcess

    writer = WriterProcess(str(Path(tempfile.gettempdir()) / "unused.db"), capture="full",
                           queue_size=10**9, batch_size=10**9)
    record = RequestRecord("req", "chat", "127.0.0.1")
    record.payload = orjson.loads(load.body("bench"))
    record.model, record.provider, record.deployment, record.attempts = "bench", "fast", "fast/bench", 1
    record.usage, record.finish_reason, record.finished = Usage(12, 7), "stop", record.started + 0.001
    record.reply = (b'{"id":"c","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,'
                    b'"message":{"role":"assistant","content":"Hello from the bench upstream."},'
                    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7}}')
    n = 100_000
    put = min(timeit.repeat("put(record)", globals={"put": writer.put, "record": record}, number=n, repeat=5)) / n
    batch = writer._buffer[:256]
    send = min(timeit.repeat("dumps(('rows', batch))", globals={"dumps": marshal.dumps, "batch": batch},
                             number=200, repeat=5)) / 200 / len(batch)
    convert = min(timeit.repeat("build_row(record, capture='full', client_ip=True)",
                                globals={"build_row": build_row, "record": record}, number=n, repeat=5)) / n
    return (put + send) * 1e9, convert * 1e9


# --- modes and gateways ------------------------------------------------------------


async def _pg(url: str, sql: str) -> object:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql) if sql.lstrip().upper().startswith("SELECT") else await conn.execute(sql)
    finally:
        await conn.close()


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


def _modes(args: argparse.Namespace, work: Path, schemas: list[str]) -> list[Mode]:
    db = work / "history.db"
    modes = [Mode("off", "store:\n  capture: none\n"),
             Mode("sqlite", f"store:\n  url: {db}\n  capture: {args.capture}\n  writer: {args.writer}\n",
                  count=lambda: _sqlite_count(db))]
    if not args.no_postgres:
        schema = f"labgate_bench_{uuid.uuid4().hex[:10]}"
        try:
            asyncio.run(_pg(args.database_url, f"CREATE SCHEMA {schema}"))
        except Exception as exc:
            raise RuntimeError(f"PostgreSQL at {args.database_url} is not usable ({exc}); "
                               "run with --no-postgres to skip it") from None
        schemas.append(schema)
        url = _with_schema(args.database_url, schema)
        modes.append(Mode("postgres", f"store:\n  url: \"{url}\"\n  capture: {args.capture}\n  writer: {args.writer}\n",
                          count=lambda: int(asyncio.run(_pg(url, "SELECT count(*) FROM requests"))),  # type: ignore[arg-type]
                          url=url))
    return modes


def _sqlite_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])


def _config(directory: Path, *, upstream: str, port: int, store: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "providers.yaml").write_text(
        f"providers:\n  fast:\n    type: openai_compatible\n    base_url: {upstream}/v1\n    models: [bench]\n")
    (directory / "gateway.yaml").write_text(
        f"server:\n  host: 127.0.0.1\n  port: {port}\nauth:\n  master_key_env: LABGATE_BENCH_KEY\n"
        f"logging:\n  level: info\n  requests: true\n{store}")


@contextlib.contextmanager
def _gateway(mode: Mode, place: machine.Placement, work: Path, upstream: str, tag: str):  # type: ignore[no-untyped-def]
    port = procs.free_port()
    config = work / f"config-{mode.name}"
    _config(config, upstream=upstream, port=port, store=mode.store)
    env = {**os.environ, "LABGATE_BENCH_KEY": KEY}
    with (work / f"access-{mode.name}.log").open("ab") as access:
        proc = procs.spawn([sys.executable, "-m", "labgate", "serve", "--config", str(config)],
                           cores=place.gateway, log=work / f"labgate-{mode.name}-{tag}.log", env=env, stdout=access)
    try:
        procs.wait_listening(port, proc=proc, timeout=30)
        procs.pin_helpers(proc.pid, place.load)  # the writer process (store.writer: process), off the gateway core
        if mode.name == "postgres":
            _pin_postgres_sessions(port, mode, place)
        yield proc, port
    finally:
        procs.stop(proc, grace=30)


def _pin_postgres_sessions(port: int, mode: Mode, place: machine.Placement) -> None:
    """PostgreSQL's backends serving labgate (application_name 'labgate') go to the load core, like the
    writer: a database normally runs on its own host, not on the gateway's core."""
    deadline = time.monotonic() + 10
    while not _status(port).get("ready") and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = asyncio.run(_pg(mode.url, "SELECT string_agg(pid::text, ',') FROM pg_stat_activity "
                                     "WHERE application_name = 'labgate'"))
    for pid in str(pids or "").split(","):
        if pid:  # a PostgreSQL backend is one thread
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(pid), place.load)


def _status(port: int) -> dict[str, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/admin/history/status",
                                     headers={"authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return orjson.loads(resp.read())


# --- the closed-loop throughput leg ---------------------------------------------------


def _throughput(args: argparse.Namespace, modes: list[Mode], place: machine.Placement, work: Path,
                upstream: str) -> bool:
    failed = False
    for round_no in range(args.rounds):
        order = modes[round_no % len(modes):] + modes[:round_no % len(modes)]
        for mode in order:
            before_rows = mode.count() if mode.count and round_no else 0  # type: ignore[operator]
            try:
                leg = _leg(args, mode, place, work, upstream, f"r{round_no}")
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                print(f"bench: round {round_no + 1} {mode.name} failed: {exc}", file=sys.stderr)
                failed = True
                continue
            if mode.count is not None:
                leg.stored = mode.count() - before_rows  # type: ignore[operator]
            mode.legs.append(leg)
            print(f"bench: round {round_no + 1} {mode.name:8} {leg.rps:8.0f} req/s  {leg.cpu_us:6.1f} µs CPU/req"
                  f" (+ writer {leg.writer_cpu_us:5.1f})"
                  f"  at {args.fixed_rate}/s: {leg.fixed_cpu_us:6.1f} µs/req ({leg.fixed_loop_us:.1f} loop thread)"
                  + (f"  stored {leg.stored}/{leg.answered}  dropped {leg.dropped}" if leg.stored is not None else ""),
                  flush=True)
    return failed


def _thread_cpu(pid: int) -> tuple[float, float]:
    """(whole process, main thread) user+system CPU seconds; the main thread runs the event loop."""
    main = 0.0
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        main = (int(fields[11]) + int(fields[12])) / machine.TICKS
    return procs.cpu_seconds(pid), main


def _leg(args: argparse.Namespace, mode: Mode, place: machine.Placement, work: Path, upstream: str,
         tag: str) -> Leg:
    with _gateway(mode, place, work, upstream, tag) as (proc, port):
        target = load.Target(f"http://127.0.0.1:{port}/v1/chat/completions", (f"authorization: Bearer {KEY}",))
        warm = load.wrk(target, connections=args.connections, seconds=2, cores=place.load)
        cpu0, writer0 = procs.cpu_seconds(proc.pid), procs.helpers_cpu_seconds(proc.pid)
        result = load.wrk(target, connections=args.connections, seconds=args.duration, cores=place.load)
        time.sleep(2 * 0.5)  # the writer finishes the leg's last batches (default flush interval 0.5 s)
        cpu1, writer1 = procs.cpu_seconds(proc.pid), procs.helpers_cpu_seconds(proc.pid)
        fixed_cpu = fixed_loop = 0.0
        fixed_sent = 0
        if args.fixed_rate:
            total0, main0 = _thread_cpu(proc.pid)
            fixed = asyncio.run(_open_loop(port, rate=args.fixed_rate, seconds=args.duration, watch=False))
            time.sleep(2 * 0.5)  # let the writer finish the leg's last batches (default flush interval 0.5 s)
            total1, main1 = _thread_cpu(proc.pid)
            fixed_sent = fixed.sent
            fixed_cpu = (total1 - total0) / max(1, fixed.answered) * 1e6
            fixed_loop = (main1 - main0) / max(1, fixed.answered) * 1e6
        dropped = _status(port)["dropped"] if mode.count is not None else None
    # answered: what wrk completed (warm-up + leg) and the fixed-rate leg sent. The gateway also answered the
    # few requests wrk still had in flight when it stopped (≤ connections per run): stored - answered is small.
    return Leg(rps=result.rps, cpu_us=(cpu1 - cpu0) / max(1, result.requests) * 1e6,
               writer_cpu_us=(writer1 - writer0) / max(1, result.requests) * 1e6, requests=result.requests,
               errors=result.errors + result.status_errors, dropped=dropped,  # type: ignore[arg-type]
               answered=warm.requests + result.requests + fixed_sent, fixed_cpu_us=fixed_cpu,
               fixed_loop_us=fixed_loop)


def _report(modes: list[Mode], args: argparse.Namespace) -> None:
    off = {i: leg for i, leg in enumerate(modes[0].legs)}
    print(f"\nbench: history throughput, non-stream chat, c={args.connections}, {args.duration} s legs, "
          f"{args.rounds} rounds, capture {args.capture}")
    print(f"  {'mode':9} {'req/s (median, min–max)':>28} {'ratio vs off':>13} {'CPU µs/req':>11} "
          f"{'+ writer':>9} {'@fixed: µs/req':>15} {'loop thread':>12} {'CPU ratio':>10} {'stored/answered':>16} "
          f"{'dropped':>8}")
    for mode in modes:
        if not mode.legs:
            print(f"  {mode.name:9} (no successful leg)")
            continue
        rps = [leg.rps for leg in mode.legs]
        ratios = [leg.rps / off[i].rps for i, leg in enumerate(mode.legs) if i in off and off[i].rps]
        stored = (f"{sum(leg.stored or 0 for leg in mode.legs)}/{sum(leg.answered or 0 for leg in mode.legs)}"
                  if mode.count is not None else "-")
        dropped = str(sum(leg.dropped or 0 for leg in mode.legs)) if mode.count is not None else "-"
        fixed = statistics.median(leg.fixed_cpu_us for leg in mode.legs)
        cpu_ratios = [off[i].fixed_cpu_us / leg.fixed_cpu_us for i, leg in enumerate(mode.legs)
                      if i in off and leg.fixed_cpu_us]
        cpu_ratio = statistics.median(cpu_ratios) if cpu_ratios else float("nan")
        print(f"  {mode.name:9} {statistics.median(rps):>10.0f} ({min(rps):.0f}–{max(rps):.0f})".ljust(40)
              + f"{statistics.median(ratios) if ratios else float('nan'):>13.3f} "
              f"{statistics.median(leg.cpu_us for leg in mode.legs):>11.1f} "
              f"{statistics.median(leg.writer_cpu_us for leg in mode.legs):>9.1f} {fixed:>15.1f} "
              f"{statistics.median(leg.fixed_loop_us for leg in mode.legs):>12.1f} {cpu_ratio:>10.3f} "
              f"{stored:>16} {dropped:>8}")
    print("  ratio vs off: median of per-round req/s ratios (closed loop). CPU µs/req: the gateway process;\n"
          "  + writer: its history writer process (store.writer: process), pinned to the load core. CPU ratio:\n"
          "  off's CPU µs/req over this mode's (gateway process), at the same fixed open-loop rate.")


# --- instructions per request (callgrind) ------------------------------------------------


def _instructions(args: argparse.Namespace, modes: list[Mode], place: machine.Placement, work: Path,
                  upstream: str) -> int:
    """Each mode's gateway under callgrind: counters zeroed after a warm-up, N requests on one
    connection, counters dumped. Instructions do not depend on what else the machine runs, so the
    ratio is exact where timings on a shared box are not. Under callgrind the gateway runs ~50× slower:
    the send interval to the writer process is scaled by as much (0.5 s), so that its batches hold as
    many records as at full speed (60–80 at 6,000–8,000 req/s with the default 10 ms)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench: --instructions needs valgrind (Debian package valgrind)", file=sys.stderr)
        return 2
    results: dict[str, float] = {}
    for mode in modes:
        store = mode.store + ("  send_interval_s: 0.5\n" if "capture: none" not in mode.store else "")
        port = procs.free_port()
        config = work / f"config-cg-{mode.name}"
        _config(config, upstream=upstream, port=port, store=store)
        out = work / f"callgrind-{mode.name}"
        env = {**os.environ, "LABGATE_BENCH_KEY": KEY}
        proc = procs.spawn(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                            sys.executable, "-m", "labgate", "serve", "--config", str(config)],
                           cores=place.gateway, log=work / f"cg-{mode.name}.log", env=env)
        try:
            procs.wait_listening(port, proc=proc, timeout=180)
            _sequential(port, 200)  # warm-up: code paths taken, connections pooled
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
            _sequential(port, args.instructions)
            time.sleep(1.5)  # the last batch goes to the writer process (0.5 s) and its report comes back
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
            time.sleep(1)
        finally:
            procs.stop(proc, grace=60)
        dumps = sorted(work.glob(f"callgrind-{mode.name}.{proc.pid}.*"))
        totals = [int(line.split()[1]) for line in dumps[-1].read_text().splitlines() if line.startswith("totals:")]
        results[mode.name] = totals[0] / args.instructions
        print(f"bench: {mode.name:9} {results[mode.name]:>10,.0f} instructions/request "
              f"({args.instructions} requests)", flush=True)
    off = results.get("off")
    print(f"\nbench: the gateway process's instructions per request (callgrind), capture {args.capture}, "
          f"writer {args.writer}")
    for name, value in results.items():
        ratio = f"{off / value:.3f}" if off else "-"
        print(f"  {name:9} {value:>10,.0f}   ratio off ÷ this {ratio}   history's cost {value - (off or value):>8,.0f}")
    return 0


def _sequential(port: int, n: int) -> None:
    body = load.body("bench").encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(n):
            conn.request("POST", "/v1/chat/completions", body,
                         {"content-type": "application/json", "authorization": f"Bearer {KEY}"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"HTTP {answer.status} from the gateway")
    finally:
        conn.close()


# --- the open-loop drop check ----------------------------------------------------------


def _drop_check(args: argparse.Namespace, modes: list[Mode], place: machine.Placement, work: Path,
                upstream: str) -> bool:
    failed = False
    print(f"\nbench: drop check — open loop, {args.rate} req/s for {args.drop_seconds} s, default queue size")
    for mode in modes:
        if mode.count is None:
            continue
        before = mode.count()  # type: ignore[operator]
        with _gateway(mode, place, work, upstream, "drop") as (_proc, port):
            sent = asyncio.run(_open_loop(port, rate=args.rate, seconds=args.drop_seconds))
            status = _status(port)
        stored = mode.count() - before  # type: ignore[operator]
        ok = status["dropped"] == 0 and stored == sent.sent
        failed |= not ok
        print(f"  {mode.name:9} sent {sent.sent} in {sent.seconds:.1f} s ({sent.sent / sent.seconds:.0f} req/s), "
              f"answered {sent.answered} (status≠200: {sent.bad}), late starts {sent.late}, "
              f"dropped {status['dropped']}, peak queued {sent.peak_queue}, stored {stored} of {sent.sent} sent"
              f"  {'OK' if ok else 'MISMATCH'}")
    return failed


@dataclass(slots=True)
class OpenLoop:
    sent: int = 0
    answered: int = 0
    bad: int = 0
    late: int = 0  # requests that started > 10 ms after their slot (the client fell behind)
    seconds: float = 0.0
    peak_queue: int = 0


_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


async def _open_loop(port: int, *, rate: int, seconds: int, watch: bool = True) -> OpenLoop:
    """Send ``rate`` req/s on a fixed schedule (not waiting for answers), reusing idle keep-alive connections."""
    body = load.body("bench").encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
               b"authorization: Bearer " + KEY.encode() + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    out = OpenLoop()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        match = _LENGTH.search(head)
        await reader.readexactly(int(match.group(1)) if match else 0)
        out.answered += 1
        out.bad += head[9:12] != b"200"
        idle.append(conn)

    total = rate * seconds
    start = loop.time()
    peak_check = time.monotonic()
    while out.sent < total:
        now = loop.time()
        due = min(total, int((now - start) * rate) + 1)
        while out.sent < due:
            slot = start + out.sent / rate
            out.late += now - slot > 0.010
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            out.sent += 1
        if watch and time.monotonic() - peak_check > 1.0:
            peak_check = time.monotonic()
            status = await asyncio.to_thread(_status, port)
            out.peak_queue = max(out.peak_queue, int(status["queued"]))  # type: ignore[call-overload]
        await asyncio.sleep(0.001)
    out.seconds = loop.time() - start
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    for _, writer in idle:
        writer.close()
    return out


if __name__ == "__main__":
    sys.exit(main())
