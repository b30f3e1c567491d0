"""The serving process's CPU per traced request, by ``tracing.export`` mode (a micro-benchmark).

    .venv/bin/python bench/trace_export.py [--requests 5000]

Puts N finished, sampled records (one attempt, as a plain chat request makes) through
:class:`~labgate.telemetry.traces.Tracer` and closes it (everything exported), then reports
this process's CPU time per record (all its threads: the request path's ``put`` and the
export thread) and, for ``process``, the export process's CPU per record. The OTLP/HTTP
receiver runs in a process of its own so that its work is not counted. Measures CPU, not
wall time, so a busy machine changes the figures less than a req/s benchmark.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

from labgate.config.schema.tracing import TracingConfig
from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.telemetry.traces import Tracer

RECEIVER = """
import sys, time
from labgate.testing.otlp import OtlpReceiver
with OtlpReceiver().run_in_thread() as r:
    print(r.url, flush=True)
    sys.stdin.read()
"""


def record(n: int) -> RequestRecord:
    r = RequestRecord(f"req_{n:032x}", "chat", "127.0.0.1")
    r.model, r.provider, r.deployment, r.attempts = "sim/m", "sim", "sim/m", 1
    r.usage, r.finish_reason, r.cache_status = Usage(12, 8), "stop", "bypass"
    return r


def measure(mode: str, url: str, count: int) -> tuple[float, float, float]:
    """(put µs, serving process µs, export process µs) per record."""
    config = TracingConfig(enabled=True, endpoint=url, export=mode, export_interval_s=0.05,  # type: ignore[arg-type]
                           queue_size=count + 1)
    tracer = Tracer.from_config(config)
    assert tracer is not None
    records = []
    for n in range(count):
        r = record(n)
        tracer.begin(r)
        assert r.trace is not None
        r.trace.start_attempt("sim/m")
        r.trace.end_attempt(None)
        r.finished = time.perf_counter()
        records.append(r)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.process_time()
    for r in records:
        tracer.put(r)
    put = time.process_time() - started
    tracer.close()  # the export thread sends the rest; in process mode the child exports all and exits
    serving = time.process_time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    stats = tracer.stats()
    assert stats["exported"] == count and not stats["failed"], stats
    return put / count * 1e6, serving / count * 1e6, child / count * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    args = p.parse_args()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    try:
        assert receiver.stdout is not None
        url = receiver.stdout.readline().strip()
        print(f"{'tracing.export':<16}{'put µs':>10}{'serving process µs':>22}{'export process µs':>20}")
        for mode in ("thread", "process"):
            put, serving, child = measure(mode, url, args.requests)
            print(f"{mode:<16}{put:>10.2f}{serving:>22.1f}{child if mode == 'process' else 0:>20.1f}")
    finally:
        receiver.kill()
        receiver.wait()


if __name__ == "__main__":
    main()
