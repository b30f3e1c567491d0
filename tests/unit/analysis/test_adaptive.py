"""Adaptive allocation (analysis/adaptive.py) by seeded simulation: Thompson sampling sends more traffic to the
better variant than the fixed 50/50 split and stops on it; A/A runs rarely stop; every process computes the same
weights; the live assignment follows them."""

from __future__ import annotations

import numpy as np
import pytest

from labgate.analysis.adaptive import decide, seed_of
from labgate.analysis.experiment import Observations, analyze
from labgate.config.schema.experiments import ExperimentConfig
from labgate.routing.experiments import Experiment

PER_EPOCH = 100  # requests between two re-weightings
EPOCHS = 60


def config(**adaptive: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "name": "speed", "status": "running", "unit": "request", "metrics": ["latency_p95"],
        "variants": [{"name": "a", "model": "m1", "weight": 50}, {"name": "b", "model": "m2", "weight": 50}],
        "adaptive": {"enabled": True, "min_samples": 100, "min_share": 0.1, **adaptive}})


def simulate(cfg: ExperimentConfig, median_ms: dict[str, float], seed: int) -> tuple[dict[str, int], list]:
    """Requests assigned by the live Experiment (rendezvous hashing on request ids) with the weights each
    epoch's decision gives; latencies log-normal (σ = 0.5). Returns requests per variant and the decisions."""
    rng = np.random.default_rng(seed)
    live = Experiment.of(cfg)
    latencies: dict[str, list[float]] = {"a": [], "b": []}
    served = {"a": 0, "b": 0}
    decisions = []
    for epoch in range(EPOCHS):
        for i in range(PER_EPOCH):
            variant = live.choose(f"r{seed}-{epoch}-{i}")
            assert variant is not None
            served[variant.name] += 1
            latencies[variant.name].append(float(rng.lognormal(np.log(median_ms[variant.name]), 0.5)))
        observed = {v: Observations(requests=len(x), latency=np.asarray(x)) for v, x in latencies.items()}
        decision = decide(cfg, observed, epoch)
        decisions.append(decision)
        live.reweight(decision.weights)
        if decision.state == "stopped":
            break
    return served, decisions


def test_adaptive_sends_more_traffic_to_the_faster_variant_and_stops() -> None:
    cfg = config()
    served, decisions = simulate(cfg, {"a": 100.0, "b": 115.0}, seed=1)
    states = [d.state for d in decisions]
    assert states[0] == "burn-in" and "adaptive" in states
    assert states[-1] == "stopped" and decisions[-1].best == "a"
    assert decisions[-1].weights == {"a": 1.0, "b": 0.0}  # on_stop: winner
    # fixed allocation would have served a exactly half; adaptive gives it clearly more
    assert served["a"] / sum(served.values()) > 0.6
    # the floor: while adaptive, b never fell below min_share
    assert all(d.weights["b"] >= cfg.adaptive.min_share - 1e-9 for d in decisions if d.state == "adaptive")
    # and the same traffic with the configured weights: the stop came before a fixed test's planned end
    assert len(decisions) < EPOCHS


def test_on_stop_configured_returns_to_the_configured_weights() -> None:
    _, decisions = simulate(config(on_stop="configured"), {"a": 100.0, "b": 115.0}, seed=2)
    assert decisions[-1].state == "stopped" and decisions[-1].weights is None


def test_a_a_experiments_rarely_stop() -> None:
    stopped = sum(simulate(config(), {"a": 100.0, "b": 100.0}, seed=100 + s)[1][-1].state == "stopped"
                  for s in range(20))
    assert stopped <= 2  # the stopping rule needs the always-valid interval too (α = 0.05)


def test_max_duration_stops_without_a_winner() -> None:
    cfg = config(max_duration_s=3600)
    observed = {v: Observations(requests=200, latency=np.full(200, 100.0) * (1 + 0.01 * np.arange(200) % 3))
                for v in ("a", "b")}
    assert decide(cfg, observed, 5, first=0.0, now=1000.0).state != "stopped"
    late = decide(cfg, observed, 5, first=0.0, now=3600.0)
    assert (late.state, late.weights) == ("stopped", None)


def test_every_process_computes_the_same_weights() -> None:
    rng = np.random.default_rng(5)
    observed = {"a": Observations(requests=300, latency=rng.lognormal(4.6, 0.5, 300)),
                "b": Observations(requests=300, latency=rng.lognormal(4.65, 0.5, 300))}
    first, again = decide(config(), observed, 17), decide(config(), observed, 17)
    assert first == again and first.state == "adaptive"
    assert seed_of(config(), 17) != seed_of(config(), 18)


def test_reweight_moves_the_assignment_and_none_restores_it() -> None:
    live = Experiment.of(config())
    units = [f"u{i}" for i in range(20_000)]
    before = [live.choose(u).name for u in units]  # type: ignore[union-attr]
    live.reweight({"a": 0.9, "b": 0.1})
    after = [live.choose(u).name for u in units]  # type: ignore[union-attr]
    share = after.count("a") / len(units)
    assert 0.88 < share < 0.92
    assert all(x == "a" for x, y in zip(after, before, strict=True) if y == "a")  # only b → a moved
    live.reweight(None)
    assert [live.choose(u).name for u in units] == before  # type: ignore[union-attr]


def test_analysis_under_adaptive_allocation_uses_per_variant_sequences() -> None:
    rng = np.random.default_rng(9)
    observed = {"a": Observations(requests=2000, latency=rng.lognormal(4.6, 0.5, 2000)),
                "b": Observations(requests=200, latency=rng.lognormal(4.6 + np.log(1.3), 0.5, 200))}
    fixed = analyze(config(enabled=False), observed)
    adaptive = analyze(config(), observed)
    assert adaptive["adaptive"] and not adaptive["fixed_horizon_valid"] and fixed["fixed_horizon_valid"]
    one = next(c for c in fixed["comparisons"] if c["metric"] == "latency")
    other = next(c for c in adaptive["comparisons"] if c["metric"] == "latency")
    # both decide b is slower; the adaptive interval is wider (union of the two variants' own sequences)
    assert one["decided"] and other["decided"]
    assert other["confidence_sequence"][0] < one["confidence_sequence"][0] < 0.3
    assert other["confidence_sequence"][1] > one["confidence_sequence"][1] > 0.3
    assert 0 < other["p_always_valid"] < 0.05


@pytest.mark.parametrize("seed", range(3))
def test_per_variant_sequences_cover_under_adaptive_allocation(seed: int) -> None:
    """The interval of an adaptively allocated A/A run contains 0 at every look (in these seeded runs)."""
    _, decisions = simulate(config(stop_when_best=0.99), {"a": 100.0, "b": 100.0}, seed=300 + seed)
    assert decisions[-1].state != "stopped"
