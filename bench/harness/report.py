"""Medians of rounds with their spread, ratios between targets, and the printed table."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Round = Mapping[str, Mapping[str, float]]  # target → metric → value, for one round


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    digits: int = 0


# The rows of the table, in order. Keys are what harness/legs.py measures per target and round.
METRICS: tuple[Metric, ...] = (
    Metric("rps", "req/s (non-stream, c=16)"),
    Metric("cpu_us", "CPU µs/request (measured process)", 1),
    Metric("helper_cpu_us", "  + its writer process, on the load core", 1),
    Metric("rps_per_core", "req/s per CPU-second (1e6 ÷ CPU µs)"),
    Metric("p50_ms", "latency p50 ms (c=16)", 2),
    Metric("p90_ms", "latency p90 ms (c=16)", 2),
    Metric("p99_ms", "latency p99 ms (c=16)", 2),
    Metric("added_p50_ms", "added p50 ms vs direct (c=16)", 2),
    Metric("added_p99_ms", "added p99 ms vs direct (c=16)", 2),
    Metric("c1_p50_ms", "latency p50 ms (c=1)", 3),
    Metric("added_c1_p50_ms", "added p50 ms vs direct (c=1)", 3),
    Metric("burst_sps", "burst streams/s (20 chunks, c=16)"),
    Metric("burst_ttfb_p50_ms", "burst TTFB p50 ms (c=16)", 2),
    Metric("paced_ttfb_p50_ms", "paced TTFB p50 ms (20×5 ms, c=16)", 3),
    Metric("paced_ttfb_p99_ms", "paced TTFB p99 ms", 3),
    Metric("added_ttfb_p50_ms", "TTFB added p50 ms vs direct (paced)", 3),
    Metric("cold_start_ms", "cold start ms (spawn → first 200)"),
    Metric("rss_idle_mb", "idle RSS MB", 1),
    Metric("rss_load_mb", "RSS after load MB", 1),
    Metric("load_core_pct", "load core busy % (c=16)"),
    Metric("load_other_pct", "  of it not ours %", 1),
    Metric("other_pct", "other CPU on gateway core % (c=16)", 1),
)


@dataclass(frozen=True, slots=True)
class Ratio:
    key: str
    label: str
    # (this target's round values, the other target's round values) → ratio, or None when not computable
    compute: Callable[[Mapping[str, float], Mapping[str, float]], float | None]


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


RATIOS: tuple[Ratio, ...] = (
    Ratio("rps", "req/s ×", lambda a, b: _div(a.get("rps"), b.get("rps"))),
    Ratio("cpu", "CPU/request: other ÷ this", lambda a, b: _div(b.get("cpu_us"), a.get("cpu_us"))),
    Ratio("burst", "burst streams/s ×", lambda a, b: _div(a.get("burst_sps"), b.get("burst_sps"))),
    Ratio("added_p50", "added p50 (c=16): other ÷ this",
          lambda a, b: _div(b.get("added_p50_ms"), a.get("added_p50_ms"))),
    Ratio("ttfb", "TTFB added: other ÷ this",
          lambda a, b: _div(b.get("added_ttfb_p50_ms"), a.get("added_ttfb_p50_ms"))),
    Ratio("cold", "cold start: other ÷ this", lambda a, b: _div(b.get("cold_start_ms"), a.get("cold_start_ms"))),
    Ratio("rss", "idle RSS: other ÷ this", lambda a, b: _div(b.get("rss_idle_mb"), a.get("rss_idle_mb"))),
)
VS_DIRECT = ("rps", "burst")  # against the bare upstream only these mean something


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(rounds: Sequence[Round], targets: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """target → metric → {median, min, max, n} over the rounds that measured it."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for target in targets:
        per: dict[str, dict[str, float]] = {}
        for metric in METRICS:
            values = [r[target][metric.key] for r in rounds if metric.key in r.get(target, {})]
            if values:
                per[metric.key] = spread(values)
        out[target] = per
    return out


def ratios(rounds: Sequence[Round], this: str, others: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """other → ratio → spread of the per-round ratios (rounds are paired: same round, same conditions)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for other in others:
        per: dict[str, dict[str, float]] = {}
        for ratio in RATIOS:
            if other == "direct" and ratio.key not in VS_DIRECT:
                continue
            values = [v for r in rounds if this in r and other in r
                      if (v := ratio.compute(r[this], r[other])) is not None]
            if values:
                per[ratio.key] = spread(values)
        out[other] = per
    return out


def _number(value: float, digits: int) -> str:
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def cell(s: Mapping[str, float] | None, digits: int) -> str:
    if s is None:
        return "—"
    median = _number(s["median"], digits)
    if s["n"] < 2:
        return median
    return f"{median} ({_number(s['min'], digits)}–{_number(s['max'], digits)})"


def table(summary: Mapping[str, Mapping[str, Mapping[str, float]]], targets: Sequence[str]) -> str:
    rows = [["metric (median of rounds, (min–max))", *targets]]
    for metric in METRICS:
        cells = [cell(summary[t].get(metric.key), metric.digits) for t in targets]
        if all(c == "—" for c in cells):
            continue
        rows.append([metric.label, *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def ratio_lines(this: str, table_: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    labels = {r.key: r.label for r in RATIOS}
    lines = []
    for other, per in table_.items():
        parts = [f"{labels[k]} {cell(v, 2)}" for k, v in per.items()]
        lines.append(f"{this} vs {other}: " + "; ".join(parts) if parts else f"{this} vs {other}: —")
    return lines
