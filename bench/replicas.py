"""Replicas on one machine: req/s of 1 vs 2 ``labgate serve`` processes on one Redis, the machine's busy
share, and the latency the Redis round trips add to a request (rate limit + budget: one script call to
reserve, one to settle).

    .venv/bin/python bench/replicas.py [--seconds 5] [--connections 16]

Short closed-loop wrk runs against the provider simulator (in this process). On a 2-core machine shared
with the load generator and the simulator, 2 replicas cannot show scaling: the machine is already busy
with one; the figures say how much. Reported, never asserted (bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import load, machine, procs

from labgate.testing import Behaviour, Simulator

ALL = frozenset(os.sched_getaffinity(0))


def config(directory: Path, sim_url: str, *, redis: str | None, limited: bool) -> Path:
    directory.mkdir(parents=True)
    providers = {"providers": {"sim": {"type": "openai_compatible", "base_url": sim_url + "/v1",
                                       "models": [{"name": "bench", "pricing": {"input_per_1m": 1,
                                                                                "output_per_1m": 1}}]}}}
    gateway: dict[str, object] = {"logging": {"requests": False}, "store": {"capture": "none"}}
    if redis:
        gateway["state"] = {"url": redis, "cluster": "bench" + uuid.uuid4().hex[:8]}
    if limited:
        gateway["rate_limits"] = {"namespace": "bench" + uuid.uuid4().hex[:8], "models": {"bench": {"rpm": 10**9}}}
        gateway["budgets"] = {"limits": [{"scope": "model", "name": "bench", "limit_usd": 10**9, "period": "total"}]}
    (directory / "providers.yaml").write_text(yaml.safe_dump(providers))
    (directory / "gateway.yaml").write_text(yaml.safe_dump(gateway))
    return directory


def serve(directory: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = procs.free_port()
    proc = procs.spawn([sys.executable, "-m", "labgate", "serve", "--config", str(directory), "--port", str(port)],
                       cores=ALL, log=log)
    procs.wait_listening(port, proc=proc, timeout=60)
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions"


def run(urls: list[str], *, connections: int, seconds: int) -> tuple[float, float, float]:
    """Summed req/s, mean p50 ms, and the machine's busy share during the run."""
    busy, started = machine.core_busy_ticks(ALL), time.monotonic()
    runs = [load.wrk_start(load.Target(url, ()), connections=connections, seconds=seconds, cores=ALL) for url in urls]
    results = [load.wrk_finish(r, timeout=seconds + 30) for r in runs]
    wall = time.monotonic() - started
    share = (machine.core_busy_ticks(ALL) - busy) / machine.TICKS / (wall * len(ALL))
    assert all(r.errors == 0 and r.status_errors == 0 for r in results), results
    return sum(r.rps for r in results), sum(r.p50_ms for r in results) / len(results), share


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    with Simulator(Behaviour(completion_tokens=5), models=["bench"]).run_in_thread() as sim, \
            tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started: list[subprocess.Popen[bytes]] = []
        try:
            shared = config(root / "shared", sim.url, redis=args.redis, limited=True)
            a, url_a = serve(shared, root / "a.log")
            b, url_b = serve(shared, root / "b.log")
            started += [a, b]
            one = run([url_a], connections=args.connections, seconds=args.seconds)
            two = run([url_a, url_b], connections=args.connections // 2, seconds=args.seconds)
            print(f"machine: {len(ALL)} cores, load average {machine.load_average()}")
            print(f"1 replica : {one[0]:8.0f} req/s  p50 {one[1]:6.2f} ms  machine busy {one[2]:.0%}")
            print(f"2 replicas: {two[0]:8.0f} req/s  p50 {two[1]:6.2f} ms  machine busy {two[2]:.0%}  "
                  f"(x{two[0] / one[0]:.2f})")
            for proc in started:
                procs.stop(proc)
            started.clear()
            # one connection, one request at a time: the latency each request pays
            plain, url_p = serve(config(root / "plain", sim.url, redis=None, limited=True), root / "p.log")
            started.append(plain)
            redis, url_r = serve(config(root / "redis", sim.url, redis=args.redis, limited=True), root / "r.log")
            started.append(redis)
            rounds = []
            for _ in range(3):  # interleaved: the machine's load changes under both alike
                rounds.append((run([url_p], connections=1, seconds=max(2, args.seconds // 2))[1],
                               run([url_r], connections=1, seconds=max(2, args.seconds // 2))[1]))
            mem = sorted(r[0] for r in rounds)[1]
            red = sorted(r[1] for r in rounds)[1]
            print(f"limits in process: p50 {mem:.3f} ms; limits on Redis: p50 {red:.3f} ms; "
                  f"Redis round trips add {red - mem:+.3f} ms per request (median of 3 interleaved runs)")
        finally:
            for proc in started:
                procs.stop(proc)


if __name__ == "__main__":
    main()
