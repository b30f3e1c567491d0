"""Adaptive allocation: Thompson sampling moves an experiment's weights, off the request path.

With ``adaptive.enabled: true`` (experiments.yaml; docs/experiments.md) an
:class:`Allocator` task re-weights the experiment once per **epoch** of
``adaptive.interval_s`` seconds (epoch ``k`` starts at Unix time
``k · interval_s``):

1. it reads the experiment's records with ``timestamp < epoch start −
   settle_s`` from the history store (bounded: ``analysis/experiment.py``'s
   row limit, and ``run_timeout_s`` for the read and the draws together);
2. :func:`decide` (pure, seeded by the experiment's salt and the epoch)
   turns them into weights: the configured ones until every variant has
   ``min_samples`` values of the primary metric (burn-in); then each
   variant's posterior probability of being best (Beta for rates, normal for
   means, 20,000 draws), and weights ``min_share`` each plus the rest by
   P(best) (no arm starves);
3. it swaps them into the live assignment (``Experiment.reweight``: one
   attribute assignment) and writes an ``experiment.reweight`` row in the
   audit log.

**Why every process agrees, without shared state.** The inputs are fixed by
the epoch (records before a cut-off every writer has flushed by then) and
the draws by a seed derived from (salt, epoch): two workers or replicas that
read the same history store compute the same weights bit for bit, and the
unit hash does the rest. No state backend is needed, and none can disagree
with the history it would be computed from. Replicas with history stores of
their own (a SQLite file each) each see their own traffic only: share the
store (PostgreSQL) for adaptive experiments across replicas.

**Stopping rule.** When the best variant's P(best) reaches
``stop_when_best`` *and* its always-valid confidence sequence against every
other variant (valid under adaptive allocation: see
``analysis/experiment.py``) excludes no difference in its favour, or when
``max_duration_s`` has passed since the experiment's first record, the
allocation freezes: ``on_stop: winner`` sends all traffic to the winner
(the duration limit without a winner: the configured weights), ``configured``
returns to the configured weights. A process keeps the frozen decision
until the experiment's config changes; a process that starts later decides
again from the history (the same rule on more data).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labgate.config.schema.experiments import ExperimentConfig

log = logging.getLogger("labgate.experiments")
DRAWS = 20_000  # posterior draws per variant and epoch
RECHECK_S = 1.0  # how often the task looks for a reload that reset the weights (off the request path)
ACTOR = "labgate:adaptive"


@dataclass(frozen=True, slots=True)
class Decision:
    """One epoch's allocation for one experiment."""

    epoch: int
    state: str  # burn-in | adaptive | stopped | error
    weights: dict[str, float] | None  # None: the configured weights
    p_best: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    best: str | None = None
    reason: str = ""
    computed_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "state": self.state, "weights": self.weights, "p_best": self.p_best,
                "samples": self.samples, "best": self.best, "reason": self.reason, "computed_at": self.computed_at}


def epoch_of(config: ExperimentConfig, now: float) -> int:
    return int(now // config.adaptive.interval_s)


def cutoff(config: ExperimentConfig, epoch: int) -> float:
    """Records before this instant decide the epoch's weights."""
    return epoch * config.adaptive.interval_s - config.adaptive.settle_s


def seed_of(config: ExperimentConfig, epoch: int) -> int:
    salt = (config.salt or config.name).encode()
    return int.from_bytes(hashlib.blake2b(salt + b"/" + str(epoch).encode(), digest_size=8).digest(), "big")


def decide(config: ExperimentConfig, observed: Mapping[str, Any], epoch: int, *, first: float | None = None,
           now: float | None = None) -> Decision:
    """The epoch's weights from the variants' observations (``analysis.experiment.Observations``).

    ``first``: the experiment's first record (for ``max_duration_s``); ``now``: the epoch's cut-off."""
    import numpy as np

    from labgate.analysis import stats
    from labgate.analysis.experiment import METRICS, Observations, compare, metric_of, posterior, sample

    adaptive = config.adaptive
    metric = metric_of(config.primary)
    names = [v.name for v in config.variants]
    samples = {v: sample(observed.get(v, Observations()), metric) for v in names}
    counts = {v: s.n for v, s in samples.items()}
    if first is not None and now is not None and adaptive.max_duration_s is not None \
            and now - first >= adaptive.max_duration_s:
        return Decision(epoch, "stopped", None, samples=counts,
                        reason=f"max_duration_s ({adaptive.max_duration_s:g} s) reached without a winner")
    short = [v for v, n in counts.items() if n < adaptive.min_samples]
    if short:
        return Decision(epoch, "burn-in", None, samples=counts,
                        reason=f"{', '.join(short)} below min_samples ({adaptive.min_samples}) on {metric}")
    rng = np.random.default_rng(seed_of(config, epoch))
    draws = posterior(samples, metric, rng, DRAWS)
    p_best, share = stats.thompson(draws, higher_is_better=METRICS[metric][1], min_share=adaptive.min_share)
    best = names[int(np.argmax(p_best))]
    p = {v: round(float(x), 6) for v, x in zip(names, p_best, strict=True)}
    weights = {v: round(float(x), 6) for v, x in zip(names, share, strict=True)}
    if p[best] >= adaptive.stop_when_best:
        against = [compare(metric, samples[v], samples[best], control=v, variant=best, alpha=config.alpha,
                           minimum_effect=config.minimum_effect, adaptive=True) for v in names if v != best]
        good = METRICS[metric][1]
        if all(c.decided and (c.difference > 0) == good for c in against):
            final = {v: float(v == best) for v in names} if adaptive.on_stop == "winner" else None
            return Decision(epoch, "stopped", final, p, counts, best,
                            f"P({best} best) {p[best]:.3f} ≥ {adaptive.stop_when_best:g} and its always-valid "
                            f"interval against every other variant excludes no difference")
    return Decision(epoch, "adaptive", weights, p, counts, best, "Thompson sampling")


class Allocator:
    """The background task of a gateway with adaptive experiments; :meth:`status` for the admin API."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.decisions: dict[str, tuple[str, Decision]] = {}  # name → (config fingerprint, decision)
        self._task: asyncio.Task[None] | None = None

    def ensure(self) -> None:
        """Start the task when some running experiment is adaptive (from a coroutine; no-op otherwise)."""
        if self._task is not None and not self._task.done():
            return
        if not _adaptive(self.gateway.runtime.config):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._run(), name="labgate-experiments-adaptive")

    def reloaded(self, _result: Any = None) -> None:
        """After a reload: the new runtime's experiments get the weights in force at once (when their config
        did not change), and the task starts if a running experiment became adaptive."""
        for config in _adaptive(self.gateway.runtime.config):
            held = self.decisions.get(config.name)
            live = self._live(config.name)
            if held is not None and live is not None and held[0] == config.model_dump_json():
                live.reweight(held[1].weights)
        self.ensure()

    def status(self, name: str) -> dict[str, Any] | None:
        found = self.decisions.get(name)
        return None if found is None else found[1].as_dict()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while not self.gateway.draining:
            configs = _adaptive(self.gateway.runtime.config)
            if not configs:
                return  # nothing adaptive any more: a reload that enables it starts the task again
            now = time.time()
            for config in configs:
                try:
                    await self.step(config, now)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("experiments: adaptive allocation of %s failed", config.name)
            waits = [(epoch_of(c, now) + 1) * c.adaptive.interval_s - now for c in configs]
            await asyncio.sleep(max(0.05, min(RECHECK_S, *waits)))

    async def step(self, config: ExperimentConfig, now: float) -> Decision | None:
        """Decide the current epoch's weights (once per epoch) and make sure the live assignment has them."""
        fingerprint = config.model_dump_json()
        epoch = epoch_of(config, now)
        held = self.decisions.get(config.name)
        if held is None or held[0] != fingerprint or (held[1].epoch != epoch and held[1].state != "stopped"):
            decision = await asyncio.wait_for(self._decide(config, epoch), config.adaptive.run_timeout_s)
            before = None if held is None or held[0] != fingerprint else held[1]
            self.decisions[config.name] = (fingerprint, decision)
            if before is None or before.weights != decision.weights or before.state != decision.state:
                await self._audit(config.name, before, decision)
        decision = self.decisions[config.name][1]
        live = self._live(config.name)
        if live is not None and live.weights != decision.weights:
            live.reweight(decision.weights)
        return decision

    async def _decide(self, config: ExperimentConfig, epoch: int) -> Decision:
        history = self.gateway.history
        if history is None:
            return Decision(epoch, "error", None, reason="request history is off (store.capture: none)",
                            computed_at=time.time())
        return await allocation(history.store, config, epoch)

    def _live(self, name: str) -> Any:
        running = self.gateway.runtime.experiments
        if running is None:
            return None
        return next((e for e in running.experiments if e.name == name), None)

    async def _audit(self, name: str, before: Decision | None, after: Decision) -> None:
        log.info("experiments: %s epoch %d: %s %s (%s)", name, after.epoch, after.state, after.weights,
                 after.reason)
        ring = self.gateway.runtime.auth.keyring
        store = ring.store if ring is not None else getattr(self.gateway.history, "store", None)
        if store is None:
            return
        from labgate import audit

        try:
            await audit.record_action(store, f"{ACTOR}:{os.getpid()}", "experiment.reweight", name,
                                      None if before is None else {"state": before.state, "weights": before.weights},
                                      after.as_dict())
        except Exception:
            log.exception("audit: could not record the re-weighting of %s", name)


async def allocation(store: Any, config: ExperimentConfig, epoch: int) -> Decision:
    """The epoch's decision from a history store: what every gateway reading that store serves in the epoch
    (``labgate experiment status`` shows it the same way)."""
    from labgate.analysis.experiment import observations

    until = cutoff(config, epoch)
    observed, _ = await observations(store, config.name, until=until)
    first = await _first(store, config.name)
    decision = await asyncio.to_thread(decide, config, observed, epoch, first=first, now=until)
    return Decision(decision.epoch, decision.state, decision.weights, decision.p_best, decision.samples,
                    decision.best, decision.reason, time.time())


async def _first(store: Any, name: str) -> float | None:
    from labgate.store.schema import TABLE

    rows = await store.fetch(f"SELECT min(timestamp) AS first FROM {TABLE} WHERE experiment = ?", [name])
    value = rows[0]["first"] if rows else None
    return None if value is None else _seconds(value)


def _seconds(value: Any) -> float:
    return float(value.timestamp()) if hasattr(value, "timestamp") else float(value)


def _adaptive(config: Any) -> list[ExperimentConfig]:
    return [e for e in config.experiments.experiments if e.status == "running" and e.adaptive.enabled]


__all__ = ["Allocator", "Decision", "allocation", "cutoff", "decide", "epoch_of", "seed_of"]
