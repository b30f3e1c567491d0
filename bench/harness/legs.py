"""One target, one round: the measured legs and the metrics they yield.

CPU µs/request: the measured process's utime+stime (``/proc/PID/stat``, all
threads) read just before and just after the c=16 wrk run, divided by the
requests wrk completed in that run. Resolution is one clock tick (10 ms) per
read, so ≤0.2% of a 10 s leg at full load.

Added latency: this target's percentile minus the direct upstream's same
percentile *in the same round* (same load generator, same concurrency). At
c=16 the loop is closed and saturated, so latency ≈ 16 / throughput: the
added p50 there mostly reflects CPU cost per request; the c=1 leg shows the
added latency of one request on an idle gateway.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from harness import load, procs
from harness.machine import TICKS, Placement, core_busy_ticks
from harness.targets import Running


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: int  # the c=16 and burst legs; c=1 and paced legs run half of it (at least 1 s)
    warmup: int  # wrk warm-up before the c=16 leg, seconds (0: none)
    stream_warmup: float
    idle_pause: float  # after the first 200, before reading idle RSS
    connections: int = 16
    chunks: int = 20


@dataclass(slots=True)
class Outcome:
    metrics: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _leg(outcome: Outcome, name: str, what: str, run: Callable[[], None]) -> None:
    """Run one leg; a failure is recorded and the next leg still runs."""
    try:
        run()
    except Exception as exc:
        outcome.failures.append(f"{name} {what}: {exc}")


def measure(running: Running, *, plan: Plan, placement: Placement, upstream_pid: int,
            direct: Mapping[str, float] | None) -> Outcome:
    """Every leg against one running target. ``direct`` is this round's direct metrics (None for direct)."""
    out = Outcome()
    m = out.metrics
    name, target, pid = running.name, running.target, running.pid
    if running.cold_start_ms is not None:
        m["cold_start_ms"] = running.cold_start_ms
    time.sleep(plan.idle_pause)
    m["rss_idle_mb"] = procs.tree_rss_mb(pid)
    half = max(1, plan.seconds // 2)

    def c16() -> None:
        if plan.warmup:
            load.wrk(target, connections=plan.connections, seconds=plan.warmup, cores=placement.load)
        before = _Sample.take(pid, upstream_pid, placement)
        w = load.wrk(target, connections=plan.connections, seconds=plan.seconds, cores=placement.load)
        after = _Sample.take(pid, upstream_pid, placement)
        _check_wrk(w)
        wall = after.wall - before.wall
        own = after.measured - before.measured
        m.update(rps=w.rps, p50_ms=w.p50_ms, p90_ms=w.p90_ms, p99_ms=w.p99_ms, cpu_us=own / w.requests * 1e6)
        if after.helpers or before.helpers:
            m["helper_cpu_us"] = (after.helpers - before.helpers) / w.requests * 1e6
        if own > 0:  # what one core fully given to it would serve; robust when others share the core
            m["rps_per_core"] = w.requests / own
        load_busy = (after.load_core - before.load_core) / TICKS
        ours_on_load = (after.upstream - before.upstream) + (after.children - before.children)  # + wrk
        ours_on_load += after.helpers - before.helpers  # labgate's writer process, pinned there
        m["load_core_pct"] = load_busy / wall / len(placement.load) * 100
        if placement.gateway != placement.load:
            # on the gateway core everything but the measured process is someone else's work
            # (for direct, the measured process is the upstream, on the load core)
            gateway_busy = (after.gateway_core - before.gateway_core) / TICKS
            mine = own if pid != upstream_pid else 0.0
            m["other_pct"] = max(0.0, gateway_busy - mine) / wall / len(placement.gateway) * 100
            m["load_other_pct"] = max(0.0, load_busy - ours_on_load) / wall / len(placement.load) * 100

    def c1() -> None:
        w = load.wrk(target, connections=1, seconds=half, cores=placement.load)
        _check_wrk(w)
        m["c1_p50_ms"] = w.p50_ms

    def burst() -> None:
        s = load.streams(target, model="bench", chunks=plan.chunks, connections=plan.connections,
                         seconds=plan.seconds, warmup=plan.stream_warmup, cores=placement.load)
        _check_streams(s)
        m.update(burst_sps=s.per_s, burst_ttfb_p50_ms=s.ttfb_p50_ms)

    def paced() -> None:
        s = load.streams(target, model="bench-paced", chunks=plan.chunks, connections=plan.connections,
                         seconds=half, warmup=plan.stream_warmup, cores=placement.load)
        _check_streams(s)
        m.update(paced_ttfb_p50_ms=s.ttfb_p50_ms, paced_ttfb_p99_ms=s.ttfb_p99_ms)

    _leg(out, name, "non-stream c=16", c16)
    _leg(out, name, "non-stream c=1", c1)
    _leg(out, name, "burst streams", burst)
    _leg(out, name, "paced streams", paced)
    code = running.proc.poll() if running.proc is not None else None
    if code is not None:
        out.failures.append(f"{name}: the process exited with status {code} during the legs (see its log)")
    else:
        m["rss_load_mb"] = procs.tree_rss_mb(pid)
    if direct is not None:
        for key, added in (("p50_ms", "added_p50_ms"), ("p99_ms", "added_p99_ms"),
                           ("c1_p50_ms", "added_c1_p50_ms"), ("paced_ttfb_p50_ms", "added_ttfb_p50_ms")):
            if key in m and key in direct:
                m[added] = m[key] - direct[key]
    return out


@dataclass(frozen=True, slots=True)
class _Sample:
    """CPU seconds so far: the measured process, its helpers, the upstream, reaped children (wrk), both cores."""

    wall: float
    measured: float
    helpers: float
    upstream: float
    children: float
    gateway_core: int
    load_core: int

    @classmethod
    def take(cls, pid: int, upstream_pid: int, placement: Placement) -> _Sample:
        times = os.times()
        return cls(time.monotonic(), procs.cpu_seconds(pid), procs.helpers_cpu_seconds(pid),
                   procs.cpu_seconds(upstream_pid),
                   times.children_user + times.children_system,
                   core_busy_ticks(placement.gateway), core_busy_ticks(placement.load))


def _check_wrk(w: load.WrkResult) -> None:
    if w.requests == 0:
        raise RuntimeError("no request completed")
    if w.status_errors:
        raise RuntimeError(f"{w.status_errors} of {w.requests} answers had an error status")
    if w.errors > w.requests * 0.01:
        raise RuntimeError(f"{w.errors} socket errors or timeouts for {w.requests} requests")


def _check_streams(s: load.StreamResult) -> None:
    if s.streams == 0:
        raise RuntimeError(f"no stream completed ({s.errors} errors; first: {s.first_error})")
    if s.errors:
        raise RuntimeError(f"{s.errors} streams failed (first: {s.first_error})")
