"""What a request draws on, worked out once: a charge plan per (model, virtual key) (docs/limits.md).

A request under limits draws on the gateway's and its model's rpm/tpm (``rate_limits:``), its
virtual key's rpm/tpm and budget, and the budgets of its key's project, its model and the gateway
(``budgets:``). Which counters those are, their limits and their budget windows depend only on the
model, the key and the config, so :class:`Planner` compiles them into a :class:`Plan` on first use
and keeps it until the key changes (an updated key is a new object), the earliest of its budget
windows ends, or the model's route changes (a reload). A request then brings only its estimate:
prompt bytes / 4 plus ``max_tokens`` (or ``rate_limits.default_output_tokens``) tokens, and that
estimate's cost at the route's first deployment's per-token prices (also kept in the plan).

A plan has two forms:

- **charges** (:meth:`Planner.charges`), for every backend: the rpm charges built once, the tpm and
  budget charges filled in per request; what Redis takes in one script call.
- **cells**, for the in-process counters (state/counters.py): the counters themselves, mutable
  ``[value, expires at]`` lists held by reference (``rpm``: each with its step ``60 / limit``;
  ``tpm``: with its limit; ``caps``: with its limit and the spend at which alerts start), and the take
  and the settlement of those cells compiled into two functions (:meth:`MemoryCounters.compile`), which
  look up no counter key and build no charge per request. A prune of idle counters drops every plan.
"""

from __future__ import annotations

import fnmatch
import math
import re
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from labgate.providers.base import Usage
from labgate.state.base import Charge
from labgate.state.budgets import TTL_SLACK_S, compute, window

if TYPE_CHECKING:
    from labgate.config.load import Config
    from labgate.config.schema.limits import RateLimit
    from labgate.cost import Prices, Rates
    from labgate.keys import VirtualKey
    from labgate.record import RequestRecord
    from labgate.routing.table import Deployment, Route
    from labgate.state.counters import MemoryCounters, SettleCells, TakeCells

MINUTE = 60.0
BYTES_PER_TOKEN = 4  # the prompt estimate: request bytes / 4 (JSON overhead makes it an overestimate)
MODEL_MEMO = 4096  # plans kept at most; past it the memo starts again
NEVER = math.inf  # a total budget's window never ends
_new = tuple.__new__  # a named tuple without the Python frame of its __new__ (the request path)


class Reservation(NamedTuple):
    """What a request took, as charges (any backend), to settle at finish."""

    charges: tuple[Charge, ...]
    tokens: tuple[int, ...]  # indexes of tpm charges
    caps: tuple[int, ...]  # indexes of budget charges


NOTHING = Reservation((), (), ())  # taken while the backend was away (fail open): nothing to settle


class Plan:
    """The charges of one (model, virtual key) pair on one route (see the module docstring)."""

    __slots__ = ("cap_charges", "caps", "caps_at", "ends", "key", "rates", "route", "rpm", "scopes", "settle",
                 "take", "template", "tpm", "tpm_at", "tpm_charges")

    def __init__(self, key: VirtualKey | None, route: Route) -> None:
        self.key, self.route = key, route
        self.ends = NEVER  # when its earliest budget window ends (wall clock): then it is compiled again
        self.template: tuple[Charge | None, ...] = ()  # rate charges; None where a tpm charge is filled in
        self.tpm_charges: tuple[tuple[int, str, float], ...] = ()  # (index in template, counter key, limit)
        self.cap_charges: tuple[tuple[str, float, float], ...] = ()  # (counter key, limit, window end)
        self.tpm_at: tuple[int, ...] = ()
        self.caps_at: tuple[int, ...] = ()
        self.scopes: tuple[str, ...] = ()  # each budget's "scope:name:period:window", for alerts
        self.rates: tuple[float, float] | Rates | None = None  # USD per prompt and answer token; None: free
        # in-process cells (empty for other backends)
        self.rpm: tuple[tuple[list[float], float], ...] = ()  # (cell, 60 / limit)
        self.tpm: tuple[tuple[list[float], float], ...] = ()  # (cell, limit)
        self.caps: tuple[tuple[list[float], float, float], ...] = ()  # (cell, limit, spend where alerts start)
        self.take: TakeCells | None = None  # (tokens, cost) → taken: the cells' take (MemoryCounters.compile)
        self.settle: SettleCells | None = None  # (tokens, cost, real tokens, real cost) → a budget is near an alert


class Planner:
    """Compiles and keeps the plans of one config (a Limiter's); ``cells``: the in-process counters, whose
    cells the plans hold (None: a backend without cells, which takes the charges)."""

    def __init__(self, config: Config, prefix: str, prices: Prices, *, cells: MemoryCounters | None = None,
                 alert_floor: float = math.inf) -> None:
        gateway = config.gateway
        rl, budgets = gateway.rate_limits, gateway.budgets
        self.prefix, self.prices, self.cells, self.alert_floor = prefix, prices, cells, alert_floor
        self.default_output = rl.default_output_tokens if rl else 1024
        self.rpm, self.tpm = (rl.rpm, rl.tpm) if rl else (None, None)
        self.model_exact: dict[str, RateLimit] = {}
        self.model_globs: list[tuple[re.Pattern[str], str, RateLimit]] = []
        for name, limit in (rl.models.items() if rl else ()):
            if any(ch in name for ch in "*?["):
                self.model_globs.append((re.compile(fnmatch.translate(name)), name, limit))
            else:
                self.model_exact[name] = limit
        self.budgets = {(b.scope, b.name): b for b in budgets.limits} if budgets else {}
        self.global_budget = self.budgets.get(("global", None))
        # model → virtual key id ("": none) → its plan
        self.plans: dict[str, dict[str, Plan]] = {}
        self._count = 0
        # a route's estimate rates: (USD per prompt token, per answer token), a tiered Rates, or None
        self._rates: dict[str, tuple[float, float] | Rates | None] = {}
        self._spend = len(prefix) + len("spend:")  # a budget key's "scope:name:period:window" starts here

    def plan(self, model: str, key: VirtualKey | None, route: Route, now: float) -> Plan:
        """The plan of ``model`` requested with ``key`` on ``route`` at ``now`` (wall clock): kept, or compiled."""
        plans = self.plans.get(model)
        plan = None if plans is None else plans.get(key.id if key is not None else "")
        if plan is None or plan.key is not key or plan.route is not route or now >= plan.ends:
            plan = self.compile(model, key, route, now)
        return plan

    def forget(self) -> None:
        """Drop every plan (the in-process counters were pruned: their cells may be gone)."""
        self.plans = {}
        self._count = 0

    def compile(self, model: str, key: VirtualKey | None, route: Route, now: float) -> Plan:
        """Build (and keep) the plan of ``model`` with ``key`` on ``route``, its budget windows those of ``now``."""
        counters = self.cells
        if counters is not None:
            counters.tidy()  # prune idle counters first: a prune drops the plans, never this one's cells
        p = self.prefix
        rates: list[tuple[str, int | None, int | None]] = [("global", self.rpm, self.tpm)]
        if (found := self._model_limit(model)) is not None:
            rates.append(("model:" + found[0], found[1].rpm, found[1].tpm))
        if key is not None:
            rates.append(("key:" + key.id, key.rpm, key.tpm))
        plan = Plan(key, route)
        template: list[Charge | None] = []
        tpm: list[tuple[int, str, float]] = []
        for name, rpm, tpm_limit in rates:
            if rpm:  # one request: the same charge every time
                template.append(Charge(p + "rpm:" + name, "rate", rpm, MINUTE, 1))
            if tpm_limit:  # the request's estimate: filled in per request
                tpm.append((len(template), p + "tpm:" + name, tpm_limit))
                template.append(None)
        caps = []
        for scope, limit, period in self._spends(model, key):
            wid, left = compute(period, now)
            ends = now + left if left else NEVER
            plan.ends = min(plan.ends, ends)
            caps.append((f"{p}spend:{scope}:{period}:{wid}", limit, ends))
        plan.template, plan.tpm_charges, plan.cap_charges = tuple(template), tuple(tpm), tuple(caps)
        plan.tpm_at = tuple(i for i, _, _ in tpm)
        plan.caps_at = tuple(range(len(template), len(template) + len(caps)))
        plan.scopes = tuple(ckey[self._spend:] for ckey, _, _ in caps)
        plan.rates = self.rates(route)
        if counters is not None:
            cell = counters.cell
            plan.rpm = tuple((cell(c.key, 0.0), MINUTE / c.limit) for c in template if c is not None)
            plan.tpm = tuple((cell(ckey, 0.0), limit) for _, ckey, limit in tpm)
            plan.caps = tuple((cell(ckey, ends - now + TTL_SLACK_S if ends != NEVER else 0.0), limit,
                               self.alert_floor * limit) for ckey, limit, ends in caps)
            plan.take, plan.settle = counters.compile(plan.rpm, plan.tpm, plan.caps)
        if self._count >= MODEL_MEMO:
            self.forget()
        self.plans.setdefault(model, {})[key.id if key is not None else ""] = plan
        self._count += 1
        return plan

    def _spends(self, model: str, key: VirtualKey | None) -> list[tuple[str, float, str]]:
        """The budgets ``model`` with ``key`` draws on: (scope, limit USD, period)."""
        spends: list[tuple[str, float, str]] = []
        if key is not None:
            if key.budget_usd is not None:
                spends.append(("key:" + key.id, key.budget_usd, key.budget_period))
            if key.project and (b := self.budgets.get(("project", key.project))):
                spends.append(("project:" + key.project, b.limit_usd, b.period))
        if b := self.budgets.get(("model", model)):
            spends.append(("model:" + model, b.limit_usd, b.period))
        if b := self.global_budget:
            spends.append(("global", b.limit_usd, b.period))
        return spends

    def _model_limit(self, model: str) -> tuple[str, RateLimit] | None:
        found = self.model_exact.get(model)
        if found is not None:
            return model, found
        return next(((name, limit) for rx, name, limit in self.model_globs if rx.fullmatch(model)), None)

    def charges(self, plan: Plan, tokens: int, cost: float, now: float, *, budgets: bool = True) -> Reservation:
        """The plan's charges for an estimate of ``tokens`` costing ``cost`` (``budgets``: with its budgets)."""
        out = list(plan.template)
        for i, ckey, limit in plan.tpm_charges:
            out[i] = _new(Charge, (ckey, "rate", limit, MINUTE, tokens if tokens < limit else limit))
        if not (budgets and plan.cap_charges):
            return _new(Reservation, (tuple(out), plan.tpm_at, ()))
        for ckey, limit, ends in plan.cap_charges:
            out.append(_new(Charge, (ckey, "cap", limit, ends - now + TTL_SLACK_S if ends != NEVER else 0.0, cost)))
        return _new(Reservation, (tuple(out), plan.tpm_at, plan.caps_at))

    def estimate(self, record: RequestRecord) -> tuple[int, int]:
        """(prompt tokens, answer tokens) a request may use, before it is sent. ``Limiter.reserve_now`` has the
        same lines inline (tests/unit/state/test_plan.py compares the two paths on random traffic)."""
        payload: Any = record.payload or {}
        out = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if type(out) is not int or out < 0:  # parsed JSON: a bool is no token count
            out = self.default_output
        return len(record.body or b"") // BYTES_PER_TOKEN, out

    @staticmethod
    def cost(rates: tuple[float, float] | Rates | None, prompt: int, output: int) -> float:
        """The estimate's cost at ``rates`` (a plan's: 0 when unpriced or priced per hour)."""
        if rates is None:
            return 0.0
        if type(rates) is tuple:  # plain per-token prices: the cost without building a Usage
            return prompt * rates[0] + output * rates[1]
        return rates.cost(Usage(prompt_tokens=prompt, completion_tokens=output))  # type: ignore[union-attr]

    def rates(self, route: Route) -> tuple[float, float] | Rates | None:
        """The route's first deployment's per-token prices (kept per route name)."""
        known = self._rates.get(route.name, _UNKNOWN)
        if known is not _UNKNOWN:
            return known
        dep = route.groups[0].deployments[0] if route.groups and route.groups[0].deployments else None
        rates = self.prices.of(dep.key, dep.provider, dep.model) if dep is not None else None
        found: tuple[float, float] | Rates | None
        if rates is None or rates.per_hour is not None:
            found = None
        elif rates.tier is None:
            found = (rates.input, rates.output)
        else:
            found = rates  # tiered: Rates.cost picks the tier
        if len(self._rates) >= MODEL_MEMO:
            self._rates.clear()
        self._rates[route.name] = found
        return found

    def provider_charges(self, record: RequestRecord, dep: Deployment,
                         limits: tuple[int | None, int | None, tuple[float, str] | None]) -> Reservation:
        """What an attempt on ``dep`` draws on: its provider's ``limits`` (rpm, tpm, budget: providers.yaml)."""
        rpm, tpm_limit, budget = limits
        p, name = self.prefix, "provider:" + dep.provider
        prompt, output = self.estimate(record)
        out: list[Charge] = []
        tpm: tuple[int, ...] = ()
        caps: tuple[int, ...] = ()
        if rpm:
            out.append(Charge(p + "rpm:" + name, "rate", rpm, MINUTE, 1))
        if tpm_limit:
            tpm = (len(out),)
            out.append(Charge(p + "tpm:" + name, "rate", tpm_limit, MINUTE, min(prompt + output, tpm_limit)))
        if budget is not None:
            limit, period = budget
            wid, left = window(period)
            rates = self.prices.of(dep.key, dep.provider, dep.model)
            cost = 0.0 if rates is None or rates.per_hour is not None else rates.cost(
                Usage(prompt_tokens=prompt, completion_tokens=output))
            caps = (len(out),)
            # a total budget never ends (period 0: its counter never expires), like the gateway's own
            out.append(Charge(f"{p}spend:{name}:{period}:{wid}", "cap", limit, left + TTL_SLACK_S if left else 0.0,
                              cost))
        return Reservation(tuple(out), tpm, caps)


_UNKNOWN: Any = object()  # a route not yet in the rates memo

# What a request took from a plan's in-process cells: (the plan, the estimate's tokens, its cost). A plain
# tuple, built by BUILD_TUPLE with no call on the request path, told from a Reservation (a NamedTuple,
# another type) by ``type(held) is tuple``.
Taken: TypeAlias = tuple[Plan, int, float]
