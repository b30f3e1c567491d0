"""The numbers behind labgate's hot-path choices (issue 3): server, upstream client, JSON, --workers.

Run: ``python bench/alternatives.py [--quick]`` (the project venv's python).

The alternatives labgate did *not* pick (uvicorn, granian, httpx, msgspec) are
installed by this script with pip ``--target`` into a throwaway directory
(``--deps``, default /tmp/labgate-alt) that only the measuring processes put on
``sys.path``: they never become project dependencies.

Four measurements, each as medians of 3 interleaved rounds (A B C, A B C, …):

1. server — one trivial handler (POST, parse a ~300 B JSON body with orjson,
   answer ~300 B of JSON) behind labgate's ``HttpServer`` on uvloop, a pure ASGI
   app under uvicorn (``--loop uvloop --http httptools``) and under granian
   (ASGI, uvloop) when it installs. The server is pinned to core 0, wrk
   (``-t1 -c16``, ``harness/post.lua``) to core 1. CPU µs/request is
   utime+stime of the server's process tree over the wrk window ÷ requests.
2. client — CPU µs/request of ``HttpPool.request`` vs ``aiohttp`` vs ``httpx``
   POSTing to ``bench/upstream.py`` (core 1) from a client process on core 0
   under uvloop, sequential and 16 concurrent.
3. json — ns per loads+dumps of a ~1 KB chat request (messages + tools) and of
   a chat completion, orjson vs msgspec.json vs stdlib json (best of N).
4. workers — ``labgate serve --workers 1`` vs ``2``, unpinned (on 2 cores the
   upstream and wrk compete with the workers), wrk ``-c32``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from harness import procs  # noqa: E402
from harness.load import LUA  # noqa: E402
from harness.machine import TICKS, core_busy_ticks  # noqa: E402

PY = sys.executable
SERVER_CORE, LOAD_CORE = frozenset({0}), frozenset({1})
ALL_CORES = frozenset(range(os.cpu_count() or 1))

# ---------------------------------------------------------------- payloads

REQUEST_300 = orjson.dumps({"model": "bench", "messages": [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly and precisely."},
    {"role": "user", "content": "Say hello in one short sentence, then tell me what a gateway does."}],
    "temperature": 0.2, "max_tokens": 64, "user": "bench-user-0001"})
RESPONSE_300 = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "bench",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the server leg."},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}

_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city, in metric units.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
CHAT_REQUEST = orjson.dumps({
    "model": "gpt-4o-mini", "temperature": 0.7, "max_tokens": 256, "stream": False,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant that can call tools to look things up."},
        {"role": "user", "content": "What is the weather in Paris and in Berlin right now?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Berlin"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c":14,"sky":"cloudy"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"temp_c":11,"sky":"rain"}'}],
    "tools": [_TOOL, {**_TOOL, "function": {**_TOOL["function"], "name": "get_time",
                                           "description": "Get the local time in a city."}}],
    "tool_choice": "auto", "user": "user-1234"})
CHAT_RESPONSE = orjson.dumps({
    "id": "chatcmpl-9abcDEF0123456789", "object": "chat.completion", "created": 1_700_000_000,
    "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0123456789",
    "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
        "role": "assistant", "refusal": None,
        "content": "It is 14 °C and cloudy in Paris, and 11 °C with rain in Berlin. Take an umbrella in Berlin."}}],
    "usage": {"prompt_tokens": 187, "completion_tokens": 29, "total_tokens": 216,
              "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}})


# ---------------------------------------------------------------- servers under test (child modes)


async def asgi_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """The same handler as a pure ASGI app (uvicorn, granian)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    request = orjson.loads(body)
    out = orjson.dumps({**RESPONSE_300, "model": request["model"]})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]})
    await send({"type": "http.response.body", "body": out})


app = asgi_app


def serve_labgate(port: int) -> None:
    import uvloop

    from labgate.server.http import HttpServer, Request, Response

    async def handler(request: Request) -> Response:
        parsed = orjson.loads(request.body)
        return Response(200, [("content-type", "application/json")],
                        orjson.dumps({**RESPONSE_300, "model": parsed["model"]}))

    def error(exc: object, headers: object) -> Response:
        return Response(500, [("content-type", "application/json")], b'{"error":{}}')

    async def main() -> None:
        server = HttpServer(handler, max_body_bytes=1 << 20, error_response=error)  # type: ignore[arg-type]
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def run_client(kind: str, url: str, n: int, conc: int) -> None:
    """Child: POST ``n`` requests (after a warm-up) with ``conc`` in flight; print CPU and wall seconds."""
    import uvloop

    base = url.rstrip("/")
    body = REQUEST_300
    headers = {"content-type": "application/json", "authorization": "Bearer sk-upstream-bench"}

    async def main() -> None:
        if kind == "labgate":
            from labgate.providers.http import HttpPool
            pool = HttpPool(base + "/v1", name="bench", headers={"authorization": "Bearer sk-upstream-bench"})

            async def one() -> None:
                status, _, answer = await pool.request("POST", "/chat/completions", body, timeout=10)
                assert status == 200 and answer

            close = pool.aclose
        elif kind == "aiohttp":
            import aiohttp
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            target = base + "/v1/chat/completions"

            async def one() -> None:
                async with session.post(target, data=body, headers=headers) as resp:
                    answer = await resp.read()
                    assert resp.status == 200 and answer

            close = session.close
        else:
            import httpx
            client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
            target = base + "/v1/chat/completions"

            async def one() -> None:
                resp = await client.post(target, content=body, headers=headers)
                assert resp.status_code == 200 and resp.content

            close = client.aclose

        async def batch(count: int) -> None:
            if conc == 1:
                for _ in range(count):
                    await one()
                return
            left = count

            async def lane() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await one()

            await asyncio.gather(*(lane() for _ in range(conc)))

        await batch(max(200, n // 10))  # warm-up: connections open, code paths hot
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await batch(n)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        await close()
        print(f"RESULT {cpu1 - cpu0:.6f} {wall1 - wall0:.6f}", flush=True)

    uvloop.run(main())


# ---------------------------------------------------------------- helpers (parent)


def tree_cpu(pid: int) -> float:
    return procs.total_cpu_seconds(procs.descendants(pid))


def wrk(url: str, *, conns: int, seconds: float, cores: frozenset[int] | None, headers: str = "",
        body: bytes = REQUEST_300) -> tuple[int, float, int]:
    env = {**os.environ, "BENCH_BODY": body.decode(), "BENCH_HEADERS": headers}
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "-s", str(LUA), url]
    pre = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    out = subprocess.run(argv, env=env, capture_output=True, text=True, preexec_fn=pre, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH "))
    fields = dict(kv.split("=") for kv in line.split()[1:])
    errors = sum(int(fields[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return int(fields["requests"]), int(fields["duration_us"]) / 1e6, errors


def alt_env(deps: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(deps), os.environ.get("PYTHONPATH"))))}


def start(argv: list[str], *, port: int, cores: frozenset[int], log: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = procs.spawn(argv, cores=cores, log=log, env=env, cwd=HERE)
    procs.wait_listening(port, proc=proc, timeout=30)
    return proc


def start_upstream(log: Path, cores: frozenset[int]) -> tuple[subprocess.Popen[bytes], str]:
    port = procs.free_port()
    proc = start([PY, str(HERE / "upstream.py"), "--port", str(port)], port=port, cores=cores, log=log)
    return proc, f"http://127.0.0.1:{port}"


def med(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}–{max(values):,.1f})"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def install(deps: Path, log: Path) -> dict[str, str]:
    """pip --target the alternatives; returns {package: version or 'skipped: why'}."""
    wanted = ["uvicorn", "httpx", "msgspec", "granian"]
    got: dict[str, str] = {}
    for pkg in wanted:
        if not (deps / pkg).exists():
            with log.open("ab") as out:
                rc = subprocess.run([PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                     "--target", str(deps), pkg], stdout=out, stderr=out, timeout=120,
                                    check=False).returncode
            if rc != 0:
                got[pkg] = "skipped: pip install failed (see log)"
                continue
        dist = sorted(deps.glob(f"{pkg}-*.dist-info"))
        got[pkg] = dist[-1].name[len(pkg) + 1:-len(".dist-info")] if dist else "?"
    return got


# ---------------------------------------------------------------- legs


def leg_server(work: Path, deps: Path, versions: dict[str, str], rounds: int, seconds: float) -> str:
    env = alt_env(deps)
    servers: dict[str, tuple[list[str], dict[str, str] | None]] = {}
    p = {name: procs.free_port() for name in ("labgate", "uvicorn", "granian")}
    servers["labgate HttpServer (uvloop)"] = ([PY, str(HERE / "alternatives.py"), "--serve-labgate",
                                              str(p["labgate"])], None)
    servers[f"uvicorn {versions['uvicorn']} (uvloop, httptools)"] = (
        [PY, "-m", "uvicorn", "alternatives:app", "--host", "127.0.0.1", "--port", str(p["uvicorn"]),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
         "--lifespan", "off"], env)
    if not versions["granian"].startswith("skipped"):
        servers[f"granian {versions['granian']} (ASGI, uvloop, 1 worker)"] = (
            [PY, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--http", "1", "--workers", "1",
             "--host", "127.0.0.1", "--port", str(p["granian"]), "--no-access-log", "--log-level", "warning",
             "--working-dir", str(HERE), "alternatives:app"], env)
    ports = dict(zip(servers, p.values(), strict=False))
    running = {}
    for name, (argv, e) in servers.items():
        running[name] = start(argv, port=ports[name], cores=SERVER_CORE, log=work / "server.log", env=e)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    try:
        for name in servers:  # warm-up
            wrk(f"http://127.0.0.1:{ports[name]}/v1/chat/completions", conns=16, seconds=1, cores=LOAD_CORE)
        for _ in range(rounds):
            for name, proc in running.items():
                before = tree_cpu(proc.pid)
                n, dur, errors = wrk(f"http://127.0.0.1:{ports[name]}/v1/chat/completions", conns=16,
                                     seconds=seconds, cores=LOAD_CORE)
                cpu = tree_cpu(proc.pid) - before
                if errors or not n:
                    raise RuntimeError(f"{name}: {errors} errors in {n} requests")
                results[name].append((n / dur, cpu / n * 1e6))
    finally:
        for proc in running.values():
            procs.stop(proc)
    rows = [[name, med([r for r, _ in res]), med([c for _, c in res])] for name, res in results.items()]
    return table(["server (core 0; wrk -t1 -c16 on core 1)", "req/s", "CPU µs/request"], rows)


def leg_client(work: Path, deps: Path, versions: dict[str, str], rounds: int, n: int) -> str:
    upstream, url = start_upstream(work / "upstream.log", LOAD_CORE)
    env = alt_env(deps)
    import aiohttp
    kinds = {"labgate": "labgate HttpPool.request", "aiohttp": f"aiohttp {aiohttp.__version__} ClientSession.post",
             "httpx": f"httpx {versions['httpx']} AsyncClient.post"}
    results: dict[tuple[str, int], list[tuple[float, float]]] = {(k, c): [] for k in kinds for c in (1, 16)}
    try:
        for _ in range(rounds):
            for kind in kinds:
                for conc in (1, 16):
                    count = n if conc == 1 else 2 * n
                    out = subprocess.run([PY, str(HERE / "alternatives.py"), "--client", kind, "--url", url,
                                          "--n", str(count), "--conc", str(conc)], env=env, capture_output=True,
                                         text=True, check=True, cwd=HERE,
                                         preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CORE)).stdout
                    cpu, wall = map(float, next(ln for ln in out.splitlines() if ln.startswith("RESULT")).split()[1:])
                    results[(kind, conc)].append((cpu / count * 1e6, count / wall))
    finally:
        procs.stop(upstream)
    rows = [[label] + [x for c in (1, 16) for x in (med([u for u, _ in results[(k, c)]]),
                                                     med([r for _, r in results[(k, c)]]))]
            for k, label in kinds.items()]
    return table(["client (core 0, uvloop; upstream on core 1)", "CPU µs/req, sequential", "req/s, sequential",
                  "CPU µs/req, 16 concurrent", "req/s, 16 concurrent"], rows)


def leg_json(deps: Path, versions: dict[str, str], rounds: int, number: int) -> str:
    sys.path.insert(0, str(deps))
    import msgspec

    enc, dec = msgspec.json.Encoder(), msgspec.json.Decoder()
    impls = {
        f"orjson {orjson.__version__}": lambda b: orjson.dumps(orjson.loads(b)),
        f"msgspec {versions['msgspec']} (json.Encoder/Decoder)": lambda b: enc.encode(dec.decode(b)),
        "stdlib json": lambda b: json.dumps(json.loads(b), separators=(",", ":")).encode(),
    }
    docs = {f"chat request ({len(CHAT_REQUEST)} B)": CHAT_REQUEST, f"chat completion ({len(CHAT_RESPONSE)} B)":
            CHAT_RESPONSE}
    results: dict[tuple[str, str], list[float]] = {(i, d): [] for i in impls for d in docs}
    os.sched_setaffinity(0, SERVER_CORE)
    try:
        for _ in range(rounds):
            for i, fn in impls.items():
                for d, doc in docs.items():
                    assert orjson.loads(fn(doc)) == orjson.loads(doc)
                    best = min(timeit.repeat(lambda fn=fn, doc=doc: fn(doc), number=number, repeat=5))
                    results[(i, d)].append(best / number * 1e9)
    finally:
        os.sched_setaffinity(0, ALL_CORES)
    rows = [[i] + [med(results[(i, d)]) for d in docs] for i in impls]
    return table(["JSON, loads+dumps (core 0, best of 5)"] + [f"{d}, ns/op" for d in docs], rows)


def leg_workers(work: Path, rounds: int, seconds: float) -> str:
    """``--workers 1`` vs ``2``, unpinned, with the whole machine's CPU accounted for.

    On a box where the upstream and wrk share the cores with the gateway, more workers can only
    use what those leave. So besides req/s this prints the machine's busy share during the leg and
    the machine's CPU per request (gateway tree + upstream + wrk + anything else): if the second
    worker adds throughput until the machine is busy, and the machine's CPU per request stays the
    same, the workers do not serialise on anything and the ceiling is the hardware.
    """
    upstream, url = start_upstream(work / "upstream-w.log", ALL_CORES)
    key, ukey = "sk-labgate-bench", "sk-upstream-bench"
    running: dict[int, tuple[subprocess.Popen[bytes], int]] = {}
    results: dict[int, list[tuple[float, float, float, float]]] = {1: [], 2: []}
    try:
        for workers in (1, 2):
            config = work / f"labgate-w{workers}"
            config.mkdir()
            (config / "providers.yaml").write_text(
                "providers:\n  fast:\n    type: openai_compatible\n"
                f"    base_url: {url}/v1\n    api_key_env: LABGATE_BENCH_UPSTREAM_KEY\n    models: [bench]\n")
            (config / "gateway.yaml").write_text(
                "server:\n  host: 127.0.0.1\n  port: 0\nauth:\n  master_key_env: LABGATE_BENCH_KEY\n"
                "logging:\n  level: warning\n  requests: false\n")
            port = procs.free_port()
            env = {**os.environ, "LABGATE_BENCH_KEY": key, "LABGATE_BENCH_UPSTREAM_KEY": ukey,
                   "LABGATE_DATA_DIR": str(work / f"data-w{workers}")}
            exe = str(Path(PY).parent / "labgate")
            proc = start([exe, "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)],
                         port=port, cores=ALL_CORES, log=work / f"labgate-w{workers}.log", env=env)
            running[workers] = (proc, port)
        auth = f"authorization: Bearer {key}"
        for _, port in running.values():  # warm-up
            wrk(f"http://127.0.0.1:{port}/v1/chat/completions", conns=32, seconds=1, cores=None, headers=auth)
        for _ in range(rounds):
            for workers, (proc, port) in running.items():
                before, busy0, wall0 = tree_cpu(proc.pid), core_busy_ticks(ALL_CORES), time.monotonic()
                n, dur, errors = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", conns=32, seconds=seconds,
                                     cores=None, headers=auth)
                cpu = tree_cpu(proc.pid) - before
                busy = (core_busy_ticks(ALL_CORES) - busy0) / TICKS
                wall = time.monotonic() - wall0
                if errors or not n:
                    raise RuntimeError(f"labgate --workers {workers}: {errors} errors in {n} requests")
                results[workers].append((n / dur, cpu / n * 1e6, busy / wall / len(ALL_CORES) * 100,
                                         busy / n * 1e6))
    finally:
        for proc, _ in running.values():
            procs.stop(proc)
        procs.stop(upstream)
    base = statistics.median(r[0] for r in results[1])
    rows = [[f"labgate serve --workers {w}", med([r[0] for r in res]), med([r[1] for r in res]),
             med([r[2] for r in res]), med([r[3] for r in res]),
             f"×{statistics.median(r[0] for r in res) / base:.2f}"] for w, res in results.items()]
    return table([f"labgate, unpinned ({len(ALL_CORES)} cores shared with upstream + wrk), wrk -t1 -c32", "req/s",
                  "gateway CPU µs/request (all its processes)", "machine busy %", "machine CPU µs/request",
                  "vs 1 worker"], rows)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (a smoke run, not numbers to quote)")
    parser.add_argument("--deps", type=Path, default=Path(tempfile.gettempdir()) / "labgate-alt",
                        help="where the alternatives are pip-installed (--target), outside the project venv")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["server", "client", "json", "workers"], action="append")
    parser.add_argument("--serve-labgate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--conc", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_labgate:
        serve_labgate(args.serve_labgate)
        return 0
    if args.client:
        run_client(args.client, args.url, args.n, args.conc)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    seconds = 2.0 if args.quick else 5.0
    n = 1000 if args.quick else 4000
    number = 2000 if args.quick else 10000
    only = set(args.only or ["server", "client", "json", "workers"])
    work = Path(tempfile.mkdtemp(prefix="labgate-alt-"))
    args.deps.mkdir(parents=True, exist_ok=True)
    versions = install(args.deps, work / "pip.log")
    started = time.monotonic()
    load = os.getloadavg()
    print(f"# alternatives: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores, python {sys.version.split()[0]}, "
          f"{args.rounds} rounds, {'quick' if args.quick else 'full'}; versions {versions}", flush=True)
    print(f"# work dir {work}", flush=True)
    if "server" in only:
        print("\n" + leg_server(work, args.deps, versions, args.rounds, seconds), flush=True)
    if "client" in only:
        print("\n" + leg_client(work, args.deps, versions, args.rounds, n), flush=True)
    if "json" in only:
        print("\n" + leg_json(args.deps, versions, args.rounds, number), flush=True)
    if "workers" in only:
        print("\n" + leg_workers(work, args.rounds, seconds), flush=True)
    load = os.getloadavg()
    print(f"\n# took {time.monotonic() - started:.0f} s; load after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          "cells are median (min–max) of the rounds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
