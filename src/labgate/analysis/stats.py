"""Statistics for A/B experiments: always-valid tests beside the classical fixed-horizon ones.

Everything is written from summary statistics (counts, means, variances), so
the same functions serve one analysis and a vectorised simulation of
thousands (numpy arrays go through unchanged). docs/experiments.md says what
each one assumes.

**Always valid** (read the results as often as you like): the mixture
sequential probability ratio test (mSPRT, Johari, Koomen, Pekelis & Walsh,
"Always Valid Inference", 2017) for a difference ``θ`` whose estimate
``θ̂`` is approximately normal with variance ``V`` (a difference of means or
of proportions; ``V`` shrinks like 1/n). With a normal mixing distribution
N(0, τ²) over the alternative, the likelihood ratio against θ = θ₀ is::

    Λ = sqrt(V / (V + τ²)) · exp( (θ̂ - θ₀)² τ² / (2 V (V + τ²)) )

Rejecting when Λ ≥ 1/α keeps the chance of *ever* rejecting a true null at
or under α (Ville's inequality: Λ is a nonnegative martingale under H₀), so
the always-valid p-value is ``min(1, 1/Λ)`` and inverting the test gives a
confidence *sequence* — an interval valid at every sample size at once::

    θ̂ ± sqrt( V (V + τ²) / τ² · (2 ln(1/α) + ln((V + τ²) / V)) )

**Fixed horizon** (valid once, at a sample size chosen in advance): Welch's
t-test for means, the two-proportion z-test (pooled under H₀) with a Wald
interval for proportions, and a percentile bootstrap for quantiles. Shown
for comparison: peeking at these inflates false positives (the simulation
tests measure how much).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps  # type: ignore[import-untyped]

Array = Any  # a float or a numpy array of them: every function here broadcasts


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with its interval and p-value (``low``/``high``/``p`` broadcast like the inputs)."""

    estimate: Array
    low: Array
    high: Array
    p: Array


# --- always valid ----------------------------------------------------------------------


def msprt(diff: Array, var: Array, tau2: float, alpha: float) -> Interval:
    """Normal-mixture mSPRT for ``θ = 0`` and its confidence sequence.

    ``diff``: the estimate θ̂; ``var``: its variance V; ``tau2``: the mixing variance τ² (on θ's scale:
    the size of effect the test is most sensitive to, squared). Where ``var`` is 0 or not finite
    (no data yet) the p-value is 1 and the interval unbounded.
    """
    diff, var = np.asarray(diff, dtype=float), np.asarray(var, dtype=float)
    ok = np.isfinite(var) & (var > 0) & np.isfinite(diff)
    v = np.where(ok, var, 1.0)
    d = np.where(ok, diff, 0.0)
    log_lr = 0.5 * np.log(v / (v + tau2)) + d * d * tau2 / (2 * v * (v + tau2))
    p = np.where(ok, np.minimum(1.0, np.exp(-np.minimum(log_lr, 700.0))), 1.0)
    radius = np.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log((v + tau2) / v)))
    radius = np.where(ok, radius, np.inf)
    return Interval(_out(diff), _out(d - radius), _out(d + radius), _out(p))


# --- fixed horizon ---------------------------------------------------------------------


def welch(mean_a: Array, var_a: Array, n_a: Array, mean_b: Array, var_b: Array, n_b: Array,
          alpha: float) -> Interval:
    """Welch's t-test of ``mean_b - mean_a`` (sample variances, ddof=1) and its 1-α interval."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n_a, n_b = np.asarray(n_a, float), np.asarray(n_b, float)
        se2_a, se2_b = np.asarray(var_a, float) / n_a, np.asarray(var_b, float) / n_b
        se2 = se2_a + se2_b
        df = se2 ** 2 / (se2_a ** 2 / (n_a - 1) + se2_b ** 2 / (n_b - 1))
        diff = np.asarray(mean_b, float) - np.asarray(mean_a, float)
        se = np.sqrt(se2)
        t = diff / se
        p = 2 * sps.t.sf(np.abs(t), df)
        half = sps.t.ppf(1 - alpha / 2, df) * se
        bad = ~(np.isfinite(p) & (se > 0))
    return Interval(_out(diff), _out(np.where(bad, -np.inf, diff - half)), _out(np.where(bad, np.inf, diff + half)),
                    _out(np.where(bad, 1.0, p)))


def two_proportions(x_a: Array, n_a: Array, x_b: Array, n_b: Array, alpha: float) -> Interval:
    """The z-test of ``p_b - p_a`` (pooled under H₀) and the Wald 1-α interval (unpooled)."""
    x_a, n_a, x_b, n_b = (np.asarray(v, float) for v in (x_a, n_a, x_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        p_a, p_b = x_a / n_a, x_b / n_b
        pooled = (x_a + x_b) / (n_a + n_b)
        se0 = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
        p = 2 * sps.norm.sf(np.abs(p_b - p_a) / se0)
        se = np.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    z = sps.norm.ppf(1 - alpha / 2)
    diff = p_b - p_a
    p = np.where(np.isfinite(p), p, 1.0)
    return Interval(_out(diff), _out(diff - z * se), _out(diff + z * se), _out(p))


def bootstrap_quantile_ratio(a: np.ndarray, b: np.ndarray, q: float, *, alpha: float, resamples: int = 2000,
                             seed: int = 0) -> Interval:
    """Percentile bootstrap of ``quantile_q(b) / quantile_q(a) - 1`` (fixed horizon; p from the interval's
    coverage of 0: the smallest 2·tail share of resamples on the other side of 0)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, float), np.asarray(b, float)
    estimate = float(np.quantile(b, q) / np.quantile(a, q) - 1)
    qa = np.quantile(a[rng.integers(0, a.size, (resamples, a.size))], q, axis=1)
    qb = np.quantile(b[rng.integers(0, b.size, (resamples, b.size))], q, axis=1)
    ratios = qb / qa - 1
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(float(np.mean(ratios <= 0)), float(np.mean(ratios >= 0))))
    return Interval(estimate, float(low), float(high), p)


# --- planning --------------------------------------------------------------------------


def power(effect: Array, var_a: Array, var_b: Array, n_a: Array, n_b: Array, alpha: float) -> Array:
    """The fixed-horizon two-sided test's power to detect ``effect`` with these samples (normal approximation)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(np.asarray(var_a, float) / n_a + np.asarray(var_b, float) / n_b)
        shift = np.abs(effect) / se
    z = sps.norm.ppf(1 - alpha / 2)
    out = sps.norm.cdf(shift - z) + sps.norm.cdf(-shift - z)
    return _out(np.where(np.isfinite(out), out, 0.0))


def sample_size(effect: float, var_a: float, var_b: float, alpha: float, target: float = 0.8) -> int:
    """Units per variant (equal split) for the fixed-horizon test to reach ``target`` power."""
    if effect == 0 or not math.isfinite(var_a + var_b):
        return 0
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(target)
    return math.ceil(z * z * (var_a + var_b) / (effect * effect))


# --- adaptive allocation ---------------------------------------------------------------


def thompson(draws: np.ndarray, *, higher_is_better: bool, min_share: float) -> tuple[np.ndarray, np.ndarray]:
    """From posterior draws (variants × samples): P(best) per variant, and the allocation Thompson sampling
    gives: ``min_share`` to every variant (so none starves), the rest split by P(best)."""
    best = np.argmax(draws, axis=0) if higher_is_better else np.argmin(draws, axis=0)
    k = draws.shape[0]
    p_best = np.bincount(best, minlength=k) / draws.shape[1]
    floor = min(min_share, 1 / k)
    return p_best, floor + (1 - k * floor) * p_best


def _out(value: Any) -> Any:
    array = np.asarray(value)
    return float(array) if array.ndim == 0 else array
