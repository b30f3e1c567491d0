"""An experiment's results from the history: metrics per variant, each compared with the control.

:func:`observations` reads the experiment's records (and the feedback votes
on them) from the history store; :func:`analyze` turns them into a report:
per variant the metrics of docs/experiments.md, per (variant, metric) the
difference from the control with its always-valid confidence sequence and
p-value (mSPRT), the fixed-horizon test beside it, the power at the observed
traffic and the sample size a fixed test would need, and one verdict line.

Three kinds of comparison (``KINDS``), each on the scale it is reported in:

- ``log``: latency and time to first token: the mean of log(ms), so the
  difference is a ratio of geometric means ("B is faster by 12%"); p50/p95
  are shown too, with a bootstrap interval for the p95 ratio (fixed horizon);
- ``relative``: tokens/s, cost per request, the 1–5 score: the relative
  difference of means, its variance by the delta method;
- ``proportion``: error rate, thumbs-up rate, comparison preference: the
  difference in percentage points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from labgate.analysis import stats
from labgate.config.schema.experiments import ExperimentConfig
from labgate.store.base import Store
from labgate.store.schema import FEEDBACK_TABLE, TABLE

MAX_ROWS = 500_000  # records read per analysis (the newest); a larger experiment is analysed on these
MIN_UNITS = 30  # per variant and metric: fewer is "too few to test"
# metric → (kind, column/source, higher is better, what the verdict calls a better/worse variant)
METRICS: dict[str, tuple[str, bool, tuple[str, str], str]] = {
    "latency": ("log", False, ("faster", "slower"), "latency"),
    "ttft": ("log", False, ("faster to the first token", "slower to the first token"), "time to first token"),
    "tokens_per_second": ("relative", True, ("generates faster", "generates slower"), "tokens/s"),
    "cost_per_request": ("relative", False, ("costs less per request", "costs more per request"),
                         "cost per request"),
    "error_rate": ("proportion", False, ("fails less", "fails more"), "error rate"),
    "user_satisfaction": ("relative", True, ("scores higher", "scores lower"), "satisfaction (1–5 score)"),
    "thumbs_up_rate": ("proportion", True, ("gets more thumbs up", "gets fewer thumbs up"), "thumbs-up rate"),
    "preference_rate": ("proportion", True, ("is preferred more", "is preferred less"), "comparison preference"),
}
# what experiments.yaml's metric names are reported under (latency_p95 is the latency comparison, etc.)
CONFIG_METRIC = {"latency_p50": "latency", "latency_p95": "latency", "ttft_p50": "ttft"}


def metric_of(name: str) -> str:
    return CONFIG_METRIC.get(name, name)


@dataclass(slots=True)
class Observations:
    """One variant's raw values (numpy arrays), as read from the history."""

    requests: int = 0
    errors: int = 0
    latency: np.ndarray = field(default_factory=lambda: np.empty(0))  # ms, ok requests
    ttft: np.ndarray = field(default_factory=lambda: np.empty(0))  # ms, ok streams
    tokens_per_second: np.ndarray = field(default_factory=lambda: np.empty(0))
    cost: np.ndarray = field(default_factory=lambda: np.empty(0))  # USD, priced requests
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))  # 1–5
    thumbs_up: int = 0
    thumbs: int = 0
    preferred: int = 0
    compared: int = 0


async def observations(store: Store, name: str, *, since: float | None = None,
                       until: float | None = None) -> tuple[dict[str, Observations], bool]:
    """Each variant's observations, and whether :data:`MAX_ROWS` cut the read short."""
    d = store.dialect
    clause, params = "experiment = ?", list[Any]([name])
    if since is not None:
        clause += f" AND timestamp >= {d.time_param}"
        params.append(float(since))
    if until is not None:
        clause += f" AND timestamp < {d.time_param}"
        params.append(float(until))
    rows = await store.fetch(
        f"SELECT variant, outcome, response_time_ms, ttft_ms, completion_tokens, cost, stream FROM {TABLE} "
        f"WHERE {clause} ORDER BY timestamp DESC LIMIT {MAX_ROWS + 1}", params)
    truncated = len(rows) > MAX_ROWS
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows[:MAX_ROWS]:
        by_variant.setdefault(row["variant"] or "", []).append(row)
    out = {variant: _observe(found) for variant, found in by_variant.items()}
    votes = await store.fetch(
        f"SELECT r.variant AS variant, f.score AS score, f.thumbs AS thumbs "
        f"FROM {FEEDBACK_TABLE} f JOIN (SELECT request_id, variant FROM {TABLE} WHERE {clause}) r "
        f"ON r.request_id = f.request_id", params)
    scores: dict[str, list[float]] = {}
    for vote in votes:
        found = out.setdefault(vote["variant"] or "", Observations())
        if vote["score"] is not None:
            scores.setdefault(vote["variant"] or "", []).append(float(vote["score"]))
        if vote["thumbs"] is not None:
            found.thumbs += 1
            found.thumbs_up += vote["thumbs"] > 0
    for variant, values in scores.items():
        out[variant].scores = np.asarray(values)
    # comparison preference: the variant's runs that took part in a decided comparison (one with a
    # `preferred: true` vote) and got a vote in it; of those, the ones voted preferred
    runs = await store.fetch(
        f"SELECT r.variant AS variant, f.request_id AS request_id, f.preferred AS preferred "
        f"FROM {FEEDBACK_TABLE} f JOIN (SELECT request_id, variant FROM {TABLE} WHERE {clause}) r "
        f"ON r.request_id = f.request_id WHERE f.comparison_id IN "
        f"(SELECT comparison_id FROM {FEEDBACK_TABLE} WHERE preferred AND comparison_id IS NOT NULL)", params)
    compared: dict[str, set[str]] = {}
    won: dict[str, set[str]] = {}
    for run in runs:
        compared.setdefault(run["variant"] or "", set()).add(run["request_id"])
        if run["preferred"]:
            won.setdefault(run["variant"] or "", set()).add(run["request_id"])
    for variant, ids in compared.items():
        found = out.setdefault(variant, Observations())
        found.compared, found.preferred = len(ids), len(won.get(variant, ()))
    return out, truncated


def _observe(rows: Sequence[Mapping[str, Any]]) -> Observations:
    ok = [r for r in rows if r["outcome"] == "ok"]
    latency = np.asarray([r["response_time_ms"] for r in ok if (r["response_time_ms"] or 0) > 0], float)
    ttft = np.asarray([r["ttft_ms"] for r in ok if r["stream"] and (r["ttft_ms"] or 0) > 0], float)
    rates = []
    for r in ok:
        tokens, total = r["completion_tokens"], r["response_time_ms"]
        if tokens and total:
            generating = total - (r["ttft_ms"] or 0) if r["stream"] and r["ttft_ms"] and r["ttft_ms"] < total else total
            rates.append(tokens / (generating / 1000))
    return Observations(requests=len(rows), errors=sum(r["outcome"] in ("error", "stream_error") for r in rows),
                        latency=latency, ttft=ttft, tokens_per_second=np.asarray(rates, float),
                        cost=np.asarray([r["cost"] for r in rows if r["cost"] is not None], float))


# --- summaries -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """What a comparison needs of one variant and metric: a count and, for means, the mean and variance."""

    n: int
    mean: float  # a proportion's rate; a log metric's mean of logs
    var: float  # sample variance (ddof=1); a proportion's p(1-p)
    shown: float  # the value reported (ms for log metrics: the geometric mean)


def sample(obs: Observations, metric: str) -> Sample:
    kind = METRICS[metric][0]
    if kind == "proportion":
        hits, n = {"error_rate": (obs.errors, obs.requests), "thumbs_up_rate": (obs.thumbs_up, obs.thumbs),
                   "preference_rate": (obs.preferred, obs.compared)}[metric]
        rate = hits / n if n else math.nan
        return Sample(n, rate, rate * (1 - rate) if n else math.nan, rate)
    values = {"latency": obs.latency, "ttft": obs.ttft, "tokens_per_second": obs.tokens_per_second,
              "cost_per_request": obs.cost, "user_satisfaction": obs.scores}[metric]
    if kind == "log":
        values = np.log(values)
    n = int(values.size)
    mean = float(values.mean()) if n else math.nan
    var = float(values.var(ddof=1)) if n > 1 else math.nan
    return Sample(n, mean, var, math.exp(mean) if kind == "log" and n else mean)


# --- comparisons -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """A variant against the control on one metric. Differences are relative (log, relative kinds: 0.12 is +12%)
    or in rate points (proportions: 0.05 is +5 points)."""

    metric: str
    variant: str
    control: str
    kind: str
    n: tuple[int, int]  # control, variant
    values: tuple[float, float]  # control, variant, as reported
    difference: float
    cs: tuple[float, float]  # the always-valid confidence sequence
    p_always_valid: float
    ci: tuple[float, float]  # the fixed-horizon interval
    p_fixed: float
    power: float  # of the fixed test, at the observed sizes, for the experiment's minimum_effect
    needed: int  # units per variant the fixed test needs for 80% power at minimum_effect
    decided: bool  # the confidence sequence excludes 0
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "variant": self.variant, "control": self.control, "kind": self.kind,
                "n": list(self.n), "values": [_num(v) for v in self.values], "difference": _num(self.difference),
                "confidence_sequence": [_num(v) for v in self.cs], "p_always_valid": _num(self.p_always_valid),
                "fixed_interval": [_num(v) for v in self.ci], "p_fixed": _num(self.p_fixed),
                "power": _num(self.power), "needed_per_variant": self.needed, "decided": self.decided,
                "verdict": self.verdict}


def compare(metric: str, a: Sample, b: Sample, *, control: str, variant: str, alpha: float,
            minimum_effect: float) -> Comparison:
    """``b`` (the variant) against ``a`` (the control) on ``metric``."""
    kind = METRICS[metric][0]
    if kind == "proportion":
        seq = stats.msprt(b.mean - a.mean, _se2(a) + _se2(b), minimum_effect ** 2, alpha)
        fixed = stats.two_proportions(a.mean * a.n, a.n, b.mean * b.n, b.n, alpha)
        scale_a, scale_b, effect = a.var, b.var, minimum_effect
        diff, cs, ci = b.mean - a.mean, (seq.low, seq.high), (fixed.low, fixed.high)
    elif kind == "log":
        seq = stats.msprt(b.mean - a.mean, _se2(a) + _se2(b), math.log1p(minimum_effect) ** 2, alpha)
        fixed = stats.welch(a.mean, a.var, a.n, b.mean, b.var, b.n, alpha)
        scale_a, scale_b, effect = a.var, b.var, math.log1p(minimum_effect)
        diff = math.expm1(b.mean - a.mean) if a.n and b.n else math.nan
        cs, ci = (_expm1(seq.low), _expm1(seq.high)), (_expm1(fixed.low), _expm1(fixed.high))
    else:  # relative difference of means, variance by the delta method
        m_a, m_b = a.mean, b.mean
        usable = bool(a.n and b.n and m_a)
        var_r = _se2(b) / m_a ** 2 + (m_b ** 2 / m_a ** 4) * _se2(a) if usable else math.nan
        diff = m_b / m_a - 1 if usable else math.nan
        seq = stats.msprt(diff, var_r, minimum_effect ** 2, alpha)
        fixed = stats.welch(m_a, a.var, a.n, m_b, b.var, b.n, alpha)
        scale_a, scale_b = (a.var / m_a ** 2, b.var / m_a ** 2) if m_a else (math.nan, math.nan)
        effect = minimum_effect
        ci = (fixed.low / abs(m_a), fixed.high / abs(m_a)) if m_a else (-math.inf, math.inf)
        cs = (seq.low, seq.high)
    few = min(a.n, b.n) < MIN_UNITS
    p_seq = 1.0 if few else float(seq.p)
    decided = not few and (cs[0] > 0 or cs[1] < 0)
    power = float(stats.power(effect, scale_a, scale_b, max(a.n, 1), max(b.n, 1), alpha)) if not few else 0.0
    needed = stats.sample_size(effect, scale_a, scale_b, alpha) if math.isfinite(scale_a + scale_b) else 0
    result = Comparison(metric, variant, control, kind, (a.n, b.n), (a.shown, b.shown), diff, cs, p_seq, ci,
                        float(fixed.p), power, needed, decided, "")
    return _with_verdict(result, alpha, few)


def _se2(s: Sample) -> float:
    """The squared standard error of a sample's mean (NaN without data)."""
    return s.var / s.n if s.n else math.nan


def _with_verdict(c: Comparison, alpha: float, few: bool) -> Comparison:
    better, worse = METRICS[c.metric][2]
    label, higher_is_better = METRICS[c.metric][3], METRICS[c.metric][1]
    level = f"{100 * (1 - alpha):g}%"
    if few:
        text = f"{c.variant}: too few {label} observations to test yet ({min(c.n)} of {MIN_UNITS} needed per variant)"
    elif c.decided:
        good = (c.difference > 0) == higher_is_better
        lo, hi = sorted((abs(c.cs[0]), abs(c.cs[1])))
        # a latency ratio reads as "faster by 12%"; the interval is shown on the same (positive) side
        text = f"{c.variant} {better if good else worse} by {_amount(abs(c.difference), c.kind)} " \
               f"({level} CS {_amount(lo, c.kind, unit=False)}–{_amount(hi, c.kind)})"
    else:
        more = max(0, c.needed - min(c.n))
        text = f"no {label} difference yet for {c.variant} ({level} CS {_signed(c.cs[0], c.kind)} to " \
               f"{_signed(c.cs[1], c.kind)})" + (f"; about {more:,} more per variant for 80% power" if more else "")
    return replace(c, verdict=text)


def _amount(value: float, kind: str, *, unit: bool = True) -> str:
    if not math.isfinite(value):
        return "∞"
    if kind == "proportion":
        return f"{100 * value:.1f}" + (" points" if unit else "")
    return f"{100 * value:.0f}" + ("%" if unit else "")


def _signed(value: float, kind: str) -> str:
    if not math.isfinite(value):
        return "−∞" if value < 0 else "+∞"
    text = f"{100 * value:+.1f}" if kind == "proportion" else f"{100 * value:+.0f}%"
    return text.replace("-", "−")


def _expm1(value: float) -> float:
    return math.expm1(value) if math.isfinite(value) else (-1.0 if value < 0 else math.inf)


def _num(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


# --- the report ------------------------------------------------------------------------


def analyze(config: ExperimentConfig, observed: Mapping[str, Observations], *, truncated: bool = False,
            seed: int = 0) -> dict[str, Any]:
    """The whole report: per-variant metrics, comparisons with the control, Thompson sampling, the verdict."""
    control = config.control_name
    base = observed.get(control, Observations())
    variants = [v.name for v in config.variants]
    metrics = list(dict.fromkeys([metric_of(config.primary), *(metric_of(m) for m in config.metrics)]))
    comparisons = [compare(m, sample(base, m), sample(observed.get(v, Observations()), m), control=control,
                           variant=v, alpha=config.alpha, minimum_effect=config.minimum_effect)
                   for v in variants if v != control for m in METRICS]
    chosen = [c for c in comparisons if c.metric in metrics]
    decided = [c.verdict for c in chosen if c.decided]
    waiting = list(dict.fromkeys(METRICS[c.metric][3] for c in chosen if not c.decided))
    verdict = "; ".join(decided + ([f"keep running for {', '.join(waiting)}"] if waiting else []))
    if not decided and not waiting:
        verdict = "no metrics configured"
    p95 = _p95(base, observed, variants, control, config.alpha, seed)
    return {
        "experiment": config.name, "status": config.status, "control": control, "alpha": config.alpha,
        "primary_metric": metric_of(config.primary), "metrics": metrics, "truncated": truncated,
        "variants": [_variant_row(v, observed.get(v, Observations())) for v in variants],
        "comparisons": [c.as_dict() for c in comparisons], "latency_p95": p95,
        "thompson": _thompson(config, observed, variants, seed),
        "verdict": verdict,
    }


def _variant_row(name: str, obs: Observations) -> dict[str, Any]:
    def q(values: np.ndarray, p: float) -> float | None:
        return _num(float(np.quantile(values, p))) if values.size else None

    def mean(values: np.ndarray) -> float | None:
        return _num(float(values.mean())) if values.size else None

    return {"variant": name, "requests": obs.requests, "errors": obs.errors,
            "error_rate": _num(obs.errors / obs.requests) if obs.requests else None,
            "latency_p50_ms": q(obs.latency, 0.5), "latency_p95_ms": q(obs.latency, 0.95),
            "ttft_p50_ms": q(obs.ttft, 0.5), "tokens_per_second": mean(obs.tokens_per_second),
            "cost_per_request": mean(obs.cost), "mean_score": mean(obs.scores), "scores": int(obs.scores.size),
            "thumbs_up_rate": _num(obs.thumbs_up / obs.thumbs) if obs.thumbs else None, "thumbs": obs.thumbs,
            "preference_rate": _num(obs.preferred / obs.compared) if obs.compared else None,
            "comparison_votes": obs.compared}


def _p95(base: Observations, observed: Mapping[str, Observations], variants: list[str], control: str,
         alpha: float, seed: int) -> list[dict[str, Any]]:
    """The p95 latency ratio of each variant to the control, with a percentile bootstrap interval (fixed horizon)."""
    out = []
    for v in variants:
        other = observed.get(v, Observations())
        if v == control or min(base.latency.size, other.latency.size) < MIN_UNITS:
            continue
        found = stats.bootstrap_quantile_ratio(base.latency[:20_000], other.latency[:20_000], 0.95, alpha=alpha,
                                               seed=seed)
        out.append({"variant": v, "ratio": _num(found.estimate), "interval": [_num(found.low), _num(found.high)],
                    "p_fixed": _num(found.p)})
    return out


def _thompson(config: ExperimentConfig, observed: Mapping[str, Observations], variants: list[str],
              seed: int) -> dict[str, Any]:
    """P(best) per variant on the primary metric from its posterior, the allocation Thompson sampling gives,
    and whether the stopping rule (P(best) ≥ adaptive.stop_when_best) holds."""
    metric = metric_of(config.primary)
    rng = np.random.default_rng(seed)
    draws = []
    for v in variants:
        s = sample(observed.get(v, Observations()), metric)
        if s.n < 2 or not math.isfinite(s.var):
            return {"metric": metric, "ready": False}
        if METRICS[metric][0] == "proportion":
            hits = round(s.mean * s.n)
            draws.append(rng.beta(hits + 1, s.n - hits + 1, 4000))
        else:
            draws.append(rng.normal(s.mean, math.sqrt(s.var / s.n), 4000))
    p_best, share = stats.thompson(np.asarray(draws), higher_is_better=METRICS[metric][1],
                                   min_share=config.adaptive.min_share)
    best = int(np.argmax(p_best))
    return {"metric": metric, "ready": True, "enabled": config.adaptive.enabled,
            "p_best": {v: _num(float(p)) for v, p in zip(variants, p_best, strict=True)},
            "allocation": {v: _num(float(s)) for v, s in zip(variants, share, strict=True)},
            "stop": bool(p_best[best] >= config.adaptive.stop_when_best), "best": variants[best]}
