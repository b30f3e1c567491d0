"""Counting requests across ``--workers N``: our per-process dicts + merge at scrape, against
prometheus-client's multiprocess mode (mmap files per process, summed at scrape).

    .venv/bin/python bench/metrics_workers.py [--requests N] [--workers W]

Per request, both count the same things for a finished streamed chat request (a status
counter, the duration and time-to-first-token histograms, two token counters). Per scrape,
both produce the whole group's text: ours renders each worker and merges
(``telemetry.group.merge``; the Unix-socket round trip is not included), prometheus-client
reads and sums every worker's mmap files. Prints µs per request and ms per scrape.
Needs ``pip install prometheus-client``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.telemetry.group import merge
from labgate.telemetry.metrics import BUCKETS, Metrics


def records(n: int) -> list[RequestRecord]:
    out = []
    for i in range(n):
        r = RequestRecord("req", "chat", started=0.0)
        r.model, r.provider, r.stream, r.status = f"m{i % 4}", "p", True, 200
        r.finished, r.first_byte, r.first_token, r.usage = 0.3 + (i % 7) / 10, 0.05, 0.1, Usage(10, 20)
        out.append(r)
    return out


def ours(recs: list[RequestRecord], workers: int) -> tuple[float, float]:
    group = [Metrics() for _ in range(workers)]
    m = group[0]
    t = time.perf_counter()
    for r in recs:
        m.observe(r)
    per_request = (time.perf_counter() - t) / len(recs) * 1e6
    for other in group[1:]:
        for r in recs[:1000]:
            other.observe(r)
    t = time.perf_counter()
    for _ in range(20):
        merge([g.render() for g in group])
    return per_request, (time.perf_counter() - t) / 20 * 1e3


def multiprocess(recs: list[RequestRecord], workers: int) -> tuple[float, float]:
    directory = tempfile.mkdtemp(prefix="bench-prom-mp-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess, values

    values.ValueClass = values.get_value_class()  # pick up the environment variable set above
    registry = CollectorRegistry()
    requests = Counter("labgate_requests_total", "r", ["endpoint", "model", "provider", "status"], registry=registry)
    duration = Histogram("labgate_request_duration_seconds", "d", ["endpoint", "model", "provider"],
                         buckets=BUCKETS, registry=registry)
    ttft = Histogram("labgate_time_to_first_token_seconds", "t", ["model", "provider"], buckets=BUCKETS,
                     registry=registry)
    tokens = Counter("labgate_tokens_total", "k", ["model", "provider", "type"], registry=registry)
    t = time.perf_counter()
    for r in recs:
        model, provider = r.model or "", r.provider or ""
        requests.labels(r.endpoint, model, provider, str(r.status)).inc()
        duration.labels(r.endpoint, model, provider).observe(r.finished - r.started)  # type: ignore[operator]
        ttft.labels(model, provider).observe(r.first_token - r.started)  # type: ignore[operator]
        assert r.usage is not None
        tokens.labels(model, provider, "prompt").inc(r.usage.prompt_tokens)
        tokens.labels(model, provider, "completion").inc(r.usage.completion_tokens)
    per_request = (time.perf_counter() - t) / len(recs) * 1e6
    for name in os.listdir(directory):  # the other workers' files: copies under other pids
        for w in range(1, workers):
            with open(os.path.join(directory, name), "rb") as src, \
                    open(os.path.join(directory, name.replace(str(os.getpid()), f"9{w}")), "wb") as dst:
                dst.write(src.read())
    scrape_registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(scrape_registry)
    t = time.perf_counter()
    for _ in range(20):
        generate_latest(scrape_registry)
    return per_request, (time.perf_counter() - t) / 20 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    recs = records(args.requests)
    for name, run in (("labgate dicts + merge at scrape", ours),
                      ("prometheus-client multiprocess", multiprocess)):
        per_request, per_scrape = run(recs, args.workers)
        print(f"{name:34} {per_request:7.2f} µs/request   {per_scrape:7.2f} ms/scrape ({args.workers} workers)")


if __name__ == "__main__":
    main()
