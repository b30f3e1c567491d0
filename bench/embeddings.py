"""Embeddings benchmark: all-MiniLM-L6-v2 in labgate (engine, standalone server, gateway), one run.

    .venv/bin/python bench/embeddings.py [--requests 300] [--batches 30] [--chat-seconds 10]
                                         [--torch-venv DIR | --no-torch] [--json]

Prints, for all-MiniLM-L6-v2 on one core (``intra_op_threads: 1``, ``threads: 1``):

1. the engine alone (in this process, no HTTP): one sentence P50/P95, sentences/s at batch 32;
2. ``labgate embeddings serve`` (standalone, the seeds' service) over HTTP: the same figures;
3. ``labgate serve`` with a ``local_embeddings`` provider (through the gateway): the same figures;
4. chat req/s through that gateway (a fake upstream, ``bench/upstream.py``) alone, then while an
   embeddings burst (4 clients sending batches of 32 back to back) runs: the ratio;
5. sentence-transformers on torch, same model files, same core, one thread, side by side: the
   engine and it are measured in alternating rounds (``--rounds``), and the ratios are medians of
   per-round ratios (``--torch-venv``: a venv with torch and sentence-transformers; without it one
   is made under /tmp with ``pip install torch==2.13.0 sentence-transformers``; ``--no-torch``
   skips it).

Servers are pinned to the first usable core; clients, the fake upstream and the load
generators to the second (with one core everything shares it, and the header says so).
Timing is never pass/fail: the exit status is 0 when every leg produced numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import load, machine, procs

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODEL = "all-MiniLM-L6-v2"
TORCH_VENV = Path(tempfile.gettempdir()) / "labgate-bench-torch"
TORCH_PIN = "torch==2.13.0"
BURST_CLIENTS = 4
SUBJECTS = ["The gateway", "A small model", "Our lab", "The new release", "A cheetah", "The quarterly report",
            "My password reset", "The embeddings service", "A man", "The movie"]
VERBS = ["routes", "eats", "summarizes", "runs behind", "explains", "compares", "answers", "rejects"]
OBJECTS = ["every request to the closest engine", "a piece of bread", "the latest experiment results in detail",
           "its prey across the savanna", "why the cache missed", "two models side by side on the same prompt",
           "a question about budgets and rate limits for the whole team", "the malformed body"]


def sentences(n: int) -> list[str]:
    """``n`` fixed English sentences of 5–20 words (the same in every run)."""
    return [f"{SUBJECTS[i % 10]} {VERBS[(i * 3) % 8]} {OBJECTS[(i * 5) % 8]}." for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def figures(one: list[float], batch_seconds: list[float], batch: int, cpu_seconds: float) -> dict[str, float]:
    return {"p50_ms": percentile(one, 50) * 1000, "p95_ms": percentile(one, 95) * 1000,
            "batch32_per_s": batch * len(batch_seconds) / sum(batch_seconds),
            "cpu_ms_per_batch32": cpu_seconds / len(batch_seconds) * 1000}


def measure(call: Callable[[list[str]], Any], *, requests: int, batches: int) -> dict[str, float]:
    """One sentence ``requests`` times (after a warm-up), then ``batches`` batches of 32."""
    texts = sentences(64)
    for i in range(10):
        call([texts[i]])
        call(texts[:32])
    one = []
    for i in range(requests):
        started = time.perf_counter()
        call([texts[i % 64]])
        one.append(time.perf_counter() - started)
    spent = []
    cpu = time.process_time()  # this process's CPU: the client's too when over HTTP, so read it in-process only
    for i in range(batches):
        chunk = texts[(i % 2) * 32:(i % 2) * 32 + 32]
        started = time.perf_counter()
        call(chunk)
        spent.append(time.perf_counter() - started)
    return figures(one, spent, 32, time.process_time() - cpu)


@contextlib.contextmanager
def pinned(cores: frozenset[int]) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def engine_alone(args: argparse.Namespace, place: machine.Placement, cache: Path) -> dict[str, float]:
    from labgate.providers.local_embeddings.engine import EngineKey, engine_for
    from labgate.providers.local_embeddings.weights import builtin_dir, read_spec

    with pinned(place.gateway):
        engine = engine_for(EngineKey(read_spec(MODEL, builtin_dir(MODEL)), 1, cache))
        return measure(lambda texts: engine.run(engine.encode(texts)), requests=args.requests, batches=args.batches)


def side_by_side(args: argparse.Namespace, place: machine.Placement, cache: Path) -> dict[str, Any]:
    """The engine and sentence-transformers measured in alternating rounds; medians, and per-round ratios."""
    torch = None if args.no_torch else TorchSide.start(args, place)
    engine_rounds: list[dict[str, float]] = []
    torch_rounds: list[dict[str, float]] = []
    try:
        for _ in range(args.rounds):
            engine_rounds.append(engine_alone(args, place, cache))
            if isinstance(torch, TorchSide):
                torch_rounds.append(torch.measure())
    finally:
        if isinstance(torch, TorchSide):
            torch.close()
    out: dict[str, Any] = {"engine": medians(engine_rounds), "rounds": args.rounds}
    if torch_rounds:
        out["sentence_transformers"] = {**medians(torch_rounds), "load_s": torch.load_s}  # type: ignore[union-attr]
        pairs = list(zip(engine_rounds, torch_rounds, strict=True))
        out["throughput_ratio"] = statistics.median(e["batch32_per_s"] / t["batch32_per_s"] for e, t in pairs)
        out["cpu_ratio"] = statistics.median(t["cpu_ms_per_batch32"] / e["cpu_ms_per_batch32"] for e, t in pairs)
    else:
        out["sentence_transformers"] = {"error": torch or "skipped (--no-torch)"}
    return out


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


class Client:
    """Keep-alive HTTP/1.1 POSTs of JSON to one server."""

    def __init__(self, url: str, path: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.path = path

    def post(self, body: dict[str, Any]) -> bytes:
        self.conn.request("POST", self.path, json.dumps(body), {"content-type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{self.path} answered {response.status}: {data[:300]!r}")
        return data

    def embed(self, texts: list[str]) -> bytes:
        return self.post({"model": MODEL, "input": texts, "encoding_format": "float"})


def over_http(url: str, args: argparse.Namespace, place: machine.Placement) -> dict[str, float]:
    client = Client(url, "/v1/embeddings")
    with pinned(place.load):
        return measure(client.embed, requests=args.requests, batches=args.batches)


def start(argv: list[str], *, port: int, cores: frozenset[int], log: Path, env: dict[str, str]) -> Any:
    proc = procs.spawn(argv, cores=cores, log=log, env=env, cwd=REPO)
    procs.wait_listening(port, proc=proc, timeout=60)
    return proc


def gateway_config(workdir: Path, upstream: str, cache: Path) -> Path:
    config = workdir / "gateway-config"
    config.mkdir(exist_ok=True)
    (config / "providers.yaml").write_text(textwrap.dedent(f"""\
        providers:
          embeddings:
            type: local_embeddings
            models: [{MODEL}]
            threads: 1
            intra_op_threads: 1
            cache_dir: {cache}
          upstream:
            type: openai_compatible
            base_url: {upstream}/v1
            models: [bench]
        """))
    (config / "gateway.yaml").write_text("logging:\n  requests: false\n")
    return config


def chat_load(url: str, seconds: int, place: machine.Placement) -> tuple[float, float, str]:
    """Chat req/s and P99 ms through the gateway: wrk -c16 if installed, else 16 Python threads."""
    if load.wrk_path():
        result = load.wrk(load.Target(url + "/v1/chat/completions", ()), connections=16, seconds=seconds,
                          cores=place.load)
        return result.rps, result.p99_ms, "wrk -c16"
    done: list[float] = []
    stop_at = time.monotonic() + seconds
    body = json.loads(load.body("bench"))

    def worker() -> None:
        client = Client(url, "/v1/chat/completions")
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            client.post(body)
            done.append(time.perf_counter() - started)

    with pinned(place.load):
        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return len(done) / seconds, percentile(done, 99) * 1000, "16 Python threads (wrk not installed)"


def burst(url: str, stop: threading.Event, counted: list[int]) -> None:
    client = Client(url, "/v1/embeddings")
    texts = sentences(32)
    while not stop.is_set():
        client.embed(texts)
        counted.append(32)


def chat_under_burst(url: str, args: argparse.Namespace, place: machine.Placement) -> dict[str, Any]:
    alone, alone_p99, tool = chat_load(url, args.chat_seconds, place)
    stop, counted = threading.Event(), list[int]()
    with pinned(place.load):
        clients = [threading.Thread(target=burst, args=(url, stop, counted)) for _ in range(BURST_CLIENTS)]
        for c in clients:
            c.start()
    time.sleep(1.0)  # the burst is running
    counted.clear()
    started = time.monotonic()
    during, during_p99, _ = chat_load(url, args.chat_seconds, place)
    embedded = sum(counted) / (time.monotonic() - started)
    stop.set()
    for c in clients:
        c.join()
    return {"tool": tool, "chat_alone_rps": alone, "chat_alone_p99_ms": alone_p99, "chat_during_rps": during,
            "chat_during_p99_ms": during_p99, "ratio": during / alone if alone else 0.0,
            "burst_sentences_per_s": embedded}


TORCH_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads(1)
from sentence_transformers import SentenceTransformer
exec(sys.argv[1])  # this file's constants and measure(), so both sides run the same loop
started = time.perf_counter()
model = SentenceTransformer(sys.argv[2], device="cpu")
print("LOADED " + json.dumps(time.perf_counter() - started), flush=True)
for line in sys.stdin:  # one measurement per line received
    result = measure(lambda texts: model.encode(texts, batch_size=32),
                     requests=int(sys.argv[3]), batches=int(sys.argv[4]))
    print("RESULT " + json.dumps(result), flush=True)
"""


class TorchSide:
    """sentence-transformers on torch in its own venv: same files, same core, one thread, measured on request."""

    def __init__(self, proc: subprocess.Popen[str], load_s: float) -> None:
        self.proc, self.load_s = proc, load_s

    @classmethod
    def start(cls, args: argparse.Namespace, place: machine.Placement) -> TorchSide | str:
        """The running side, or why it could not start (installing torch into a throwaway venv first if needed)."""
        from labgate.providers.local_embeddings.weights import builtin_dir

        venv = Path(args.torch_venv) if args.torch_venv else TORCH_VENV
        python = venv / "bin" / "python"
        check = [str(python), "-c", "import torch, sentence_transformers"]
        if not python.exists() or subprocess.run(check, capture_output=True).returncode != 0:
            if args.torch_venv:
                return f"{venv} lacks torch or sentence-transformers"
            print(f"bench: installing {TORCH_PIN} sentence-transformers into {venv} (once)…", file=sys.stderr)
            try:
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
                subprocess.run([str(venv / "bin" / "pip"), "install", "-q", TORCH_PIN, "sentence-transformers"],
                               check=True, timeout=900, capture_output=True)
            except (subprocess.SubprocessError, OSError) as exc:
                return f"could not install torch + sentence-transformers: {exc}"
        shared = (f"from typing import Any, Callable\nSUBJECTS = {SUBJECTS!r}\n"
                  f"VERBS = {VERBS!r}\nOBJECTS = {OBJECTS!r}\n")
        shared += "\n".join(inspect.getsource(f) for f in (sentences, percentile, figures, measure))
        proc = subprocess.Popen(
            [str(python), "-c", TORCH_SCRIPT, shared, str(builtin_dir(MODEL)), str(args.requests), str(args.batches)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
            preexec_fn=lambda: os.sched_setaffinity(0, place.gateway))
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("LOADED "):
            proc.kill()
            return f"the torch side did not start: {line.strip() or 'no output'}"
        return cls(proc, json.loads(line[len("LOADED "):]))

    def measure(self) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("RESULT "):
            raise RuntimeError(f"the torch side failed: {line.strip() or 'no output'}")
        return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def row(name: str, f: dict[str, float]) -> str:
    return f"  {name:<46} {f['p50_ms']:>8.2f} {f['p95_ms']:>8.2f} {f['batch32_per_s']:>12.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="one-sentence requests per leg (default 300)")
    parser.add_argument("--batches", type=int, default=30, help="batch-32 requests per leg (default 30)")
    parser.add_argument("--chat-seconds", type=int, default=10, help="seconds per chat load leg (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, engine vs torch (default 3)")
    parser.add_argument("--torch-venv", help="a venv with torch and sentence-transformers (default: make one)")
    parser.add_argument("--no-torch", action="store_true", help="skip the sentence-transformers comparison")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        from labgate.providers.local_embeddings.weights import builtin_installed
    except ImportError as exc:
        raise SystemExit(f"bench: run with the project's venv ({exc})") from None
    if not builtin_installed():
        raise SystemExit("bench: the all-MiniLM-L6-v2 weights are missing: labgate embeddings install-weights")
    place = machine.placement()
    one, five, fifteen = machine.load_average()
    print(f"embeddings bench: {machine.cpu_model()}, {place.cores} cores; {place.note}; "
          f"load average {one:.2f} {five:.2f} {fifteen:.2f}", file=sys.stderr)
    results: dict[str, Any] = {"load_average": [one, five, fifteen], "cores": place.cores}
    with tempfile.TemporaryDirectory(prefix="labgate-bench-embed-") as tmp:
        workdir = Path(tmp)
        cache = workdir / "onnx"
        env = {**os.environ, "LABGATE_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(REPO / "src")}
        results.update(side_by_side(args, place, cache))
        port = procs.free_port()
        server = start([sys.executable, "-m", "labgate", "embeddings", "serve", "--port", str(port)], port=port,
                       cores=place.gateway, log=workdir / "standalone.log",
                       env={**env, "LABGATE_DATA_DIR": str(workdir)})
        try:
            results["standalone"] = over_http(f"http://127.0.0.1:{port}", args, place)
        finally:
            procs.stop(server)
        up_port = procs.free_port()
        upstream = start([sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port)], port=up_port,
                         cores=place.load, log=workdir / "upstream.log", env=env)
        gw_port = procs.free_port()
        config = gateway_config(workdir, f"http://127.0.0.1:{up_port}", cache)
        gateway = start([sys.executable, "-m", "labgate", "serve", "--config", str(config), "--port", str(gw_port)],
                        port=gw_port, cores=place.gateway, log=workdir / "gateway.log", env=env)
        try:
            url = f"http://127.0.0.1:{gw_port}"
            results["gateway"] = over_http(url, args, place)
            results["chat"] = chat_under_burst(url, args, place)
        finally:
            procs.stop(gateway)
            procs.stop(upstream)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def report(results: dict[str, Any]) -> None:
    print(f"\nall-MiniLM-L6-v2, one core ({MODEL}; 384 dims)")
    print(f"  {'':<46} {'P50 ms':>8} {'P95 ms':>8} {'batch-32 s/s':>12}")
    print(row(f"engine alone (no HTTP; median of {results['rounds']})", results["engine"]))
    print(row("standalone: labgate embeddings serve", results["standalone"]))
    print(row("through the gateway (labgate serve)", results["gateway"]))
    st = results["sentence_transformers"]
    if "p50_ms" in st:
        print(row(f"sentence-transformers on torch (median of {results['rounds']})", st))
        print(f"  batch-32, labgate engine vs sentence-transformers (medians of per-round ratios): throughput "
              f"{results['throughput_ratio']:.2f}x, CPU per batch {results['cpu_ratio']:.2f}x less "
              f"({results['engine']['cpu_ms_per_batch32']:.0f} vs {st['cpu_ms_per_batch32']:.0f} ms); "
              f"torch load {st['load_s']:.1f} s")
    else:
        print(f"  sentence-transformers: {st['error']}")
    chat = results["chat"]
    print(f"\nchat through the gateway ({chat['tool']}), alone vs during an embeddings burst "
          f"({BURST_CLIENTS} clients × batch 32, {chat['burst_sentences_per_s']:.0f} sentences/s):")
    print(f"  chat req/s {chat['chat_alone_rps']:.0f} → {chat['chat_during_rps']:.0f}: ratio {chat['ratio']:.2f}; "
          f"P99 {chat['chat_alone_p99_ms']:.1f} → {chat['chat_during_p99_ms']:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
