"""Rate limits and budgets on the request path: reserve before the call, settle after (docs/limits.md).

``Limiter.plan`` (no I/O) lists what a request draws on: the gateway's and
its model's rpm/tpm (``rate_limits:``), its virtual key's rpm/tpm and
budget, and the budgets of its key's project, its model and the gateway
(``budgets:``). ``reserve`` takes them all at once (state/counters.py: one
script call on Redis): one request for rpm, an estimate for tpm (prompt
bytes / 4 plus ``max_tokens``, or ``rate_limits.default_output_tokens``) and
the estimate's cost for budgets. Refused: 429 ``rate_limit_exceeded`` with
``retry-after``, or ``insufficient_quota`` for a budget (or, with
``budgets.on_exhausted: fallback``, the request goes to the fallback model).
Provider limits (``providers.yaml``: a provider's ``rate_limits`` and ``budget``)
are taken per attempt instead (``take_provider``, called by the attempt loop in
routing/attempts.py: one more atomic take, one script call on Redis): a
provider over its limit is passed over like a busy deployment and the next
candidate is tried; only when every candidate is over does the client get
the 429. The attempt that answers keeps its charges (settled with the
request's); one that fails gives its tokens and spend back at once.

``settle`` (at finish) moves each tpm and budget charge by the real amount
minus the estimate, so a failed call gives its reservation back. N replicas
under load thus overshoot a budget by at most the estimate errors of the
requests in flight, never by a check-then-increment race.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labgate.errors import BudgetExceededError, ProviderLimitedError, RateLimitedError
from labgate.providers.base import Usage
from labgate.state.alerts import Alerts
from labgate.state.base import KEY_PREFIX, Charge, Counters, StateUnavailableError
from labgate.state.budgets import TTL_SLACK_S, compute, window

if TYPE_CHECKING:
    from labgate.config.load import Config
    from labgate.config.schema.limits import RateLimit
    from labgate.cost import Prices
    from labgate.keys import VirtualKey
    from labgate.record import RequestRecord
    from labgate.routing.table import Deployment, Route, RouteTable

log = logging.getLogger("labgate.limits")
MINUTE = 60.0
_PERIODS = {"day": "today", "week": "this week", "month": "this month", "total": "in total"}
BYTES_PER_TOKEN = 4  # the prompt estimate: request bytes / 4 (JSON overhead makes it an overestimate)
_charge = tuple.__new__  # Charge(...) without the Python frame of a NamedTuple's __new__ (the request path)
MODEL_MEMO = 4096  # models (and budget windows) whose charges are kept preformatted; past it the memo starts again


# a model's static charges (Limiter._static_for): rate (key, limit, the rpm Charge or None: tpm), budgets
_Plan = tuple[tuple[tuple[str, float, Charge | None], ...], tuple[tuple[str, float, str], ...]]


@dataclass(slots=True)
class Reservation:
    """What a request took, to settle at finish."""

    charges: tuple[Charge, ...]
    tokens: tuple[int, ...]  # indexes of tpm charges
    caps: tuple[int, ...]  # indexes of budget charges


class Limiter:
    def __init__(self, config: Config, counters: Counters, prices: Prices) -> None:
        gateway = config.gateway
        rl, budgets = gateway.rate_limits, gateway.budgets
        self.counters = counters
        self._take_now = getattr(counters, "take_now", None)  # in-process: the take without a coroutine
        self._adjust_now = getattr(counters, "adjust_now", None)  # in-process: settled at once, no task
        self.prices = prices
        self.prefix = f"{KEY_PREFIX}:{{limits:{rl.namespace if rl else 'default'}}}:"
        self._spend = len(self.prefix) + len("spend:")  # a budget key's "scope:name:period:window" starts here
        self.fail_open = rl is None or rl.on_backend_error == "open"
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
        self.fallback = budgets.fallback_model if budgets and budgets.on_exhausted == "fallback" else None
        # provider name → (rpm, tpm, budget) from providers.yaml; only providers that set one
        self.providers: dict[str, tuple[int | None, int | None, tuple[float, str] | None]] = {}
        for pname, pconf in config.providers.items():
            prl, pb = pconf.rate_limits, pconf.budget
            if (prl is not None and (prl.rpm or prl.tpm)) or pb is not None:
                self.providers[pname] = (prl.rpm if prl else None, prl.tpm if prl else None,
                                         (pb.limit_usd, pb.period) if pb is not None else None)
        self.keyed_budgets = config.gateway.auth.virtual_keys  # keys may carry budgets of their own
        self.static = bool(self.rpm or self.tpm or self.model_exact or self.model_globs or self.budgets)
        self.alerts = Alerts(budgets.alert_thresholds if budgets else (0.5, 0.8, 1.0),
                             budgets.alert_webhook if budgets else None)
        self._pending: set[asyncio.Task[None]] = set()
        self.owns_counters = True  # false once a reload handed them to the next Runtime's limiter
        self.history: Any = None  # the history store budgets are seeded from (state/seed.py); None: not yet
        self._seeding = asyncio.Lock()
        self._static: dict[str, _Plan] = {}
        self._keys: dict[tuple[str, str, str], str] = {}

    async def seed(self, store: Any = None) -> int:
        """Seed each budget's current window from the history's cost sum, where its counter does not exist.

        ``store``: the history store (kept, to seed again when a Redis backend comes back after an
        outage). Returns how many counters had spend to seed; a failure is logged, never raised.
        """
        if store is not None:
            self.history = store
        if self.history is None or not (self.budgets or self.providers or self.keyed_budgets):
            return 0
        self._watch_empty()
        from labgate.state.seed import budget_seeds

        try:
            seeds = await budget_seeds(self, self.history)
            await self.counters.seed(tuple(seeds))  # on Redis also the marker, even with nothing to seed
        except Exception as exc:  # the history or the backend away: budgets count from here on
            log.warning("limits: could not seed budgets from the history (%s); they count from now", exc)
            with contextlib.suppress(Exception):
                await self.counters.seed(())  # on Redis: the marker, so requests do not retry the history each
            return 0
        return len(seeds)

    def _watch_empty(self) -> None:
        """On Redis, every take also checks a marker the seeding sets: an empty Redis is seeded again."""
        counters: Any = self.counters
        if hasattr(counters, "marker") and counters.marker is None:
            counters.marker = self.prefix + "seeded"
            counters.on_empty = self._seed_once

    async def _seed_once(self) -> None:
        """Concurrent takes that found Redis empty wait for one seeding."""
        counters: Any = self.counters
        async with self._seeding:
            if not await counters.marked():
                await self.seed()

    def plan(self, record: RequestRecord) -> bool:
        """Does this request draw on any limit? (No I/O: the request path asks this first.)"""
        key = record.api_key
        return self.static or (key is not None and (key.rpm or key.tpm or key.budget_usd) is not None)

    def _model_limit(self, model: str) -> tuple[str, RateLimit] | None:
        found = self.model_exact.get(model)
        if found is not None:
            return model, found
        return next(((name, limit) for rx, name, limit in self.model_globs if rx.fullmatch(model)), None)

    def _static_for(self, model: str) -> _Plan:
        """A model's rate charges (key, limit, the rpm charge itself or None for tpm) and budgets (name,
        limit, period) from the config: built on first use, then one dict lookup per request (``_static``,
        at most ``MODEL_MEMO`` models)."""
        p = self.prefix
        rates: list[tuple[str, int | None, int | None]] = [("global", self.rpm, self.tpm)]
        if (found := self._model_limit(model)) is not None:
            rates.append(("model:" + found[0], found[1].rpm, found[1].tpm))
        out: list[tuple[str, float, Charge | None]] = []
        for name, rpm, tpm_limit in rates:
            if rpm:
                out.append((p + "rpm:" + name, rpm, Charge(p + "rpm:" + name, "rate", rpm, MINUTE, 1)))
            if tpm_limit:
                out.append((p + "tpm:" + name, tpm_limit, None))
        spends: list[tuple[str, float, str]] = []
        if b := self.budgets.get(("model", model)):
            spends.append(("model:" + model, b.limit_usd, b.period))
        if b := self.global_budget:
            spends.append(("global", b.limit_usd, b.period))
        if len(self._static) >= MODEL_MEMO:
            self._static.clear()
        found_plan = self._static[model] = (tuple(out), tuple(spends))
        return found_plan

    def _spend_key(self, name: str, period: str, wid: str) -> str:
        """A budget window's counter key, formatted once per (budget, window) (``_keys``, bounded)."""
        memo = (name, period, wid)
        key = self._keys.get(memo)
        if key is None:
            if len(self._keys) >= MODEL_MEMO:
                self._keys.clear()
            key = self._keys[memo] = f"{self.prefix}spend:{name}:{period}:{wid}"
        return key

    def charges(self, record: RequestRecord, route: Route, *, budgets: bool = True) -> Reservation:
        p, key, model = self.prefix, record.api_key, record.model or ""
        prompt, output = _estimate(record, self.default_output)
        tokens = prompt + output
        out: list[Charge] = []
        tpm: list[int] = []
        caps: list[int] = []
        static = self._static.get(model)
        if static is None:
            static = self._static_for(model)
        for ckey, limit, rpm_charge in static[0]:
            if rpm_charge is not None:  # one request: the same charge every time
                out.append(rpm_charge)
            else:
                tpm.append(len(out))
                out.append(_charge(Charge, (ckey, "rate", limit, MINUTE, min(tokens, limit))))
        if key is not None:
            name = "key:" + key.id
            if key.rpm:
                out.append(Charge(p + "rpm:" + name, "rate", key.rpm, MINUTE, 1))
            if key.tpm:
                tpm.append(len(out))
                out.append(Charge(p + "tpm:" + name, "rate", key.tpm, MINUTE, min(tokens, key.tpm)))
        if budgets and (static[1] or (key is not None and (key.budget_usd is not None or key.project))):
            spends: tuple[tuple[str, float, str], ...] = static[1]
            if key is not None:
                mine: list[tuple[str, float, str]] = []
                if key.budget_usd is not None:
                    mine.append(("key:" + key.id, key.budget_usd, key.budget_period))
                if key.project and (b := self.budgets.get(("project", key.project))):
                    mine.append(("project:" + key.project, b.limit_usd, b.period))
                spends = (*mine, *spends)
            if spends:
                cost = self._estimate_cost(route, prompt, output)
                for name, limit, period in spends:
                    wid, left = window(period)
                    caps.append(len(out))
                    out.append(_charge(Charge, (self._spend_key(name, period, wid), "cap", limit,
                                                left + TTL_SLACK_S if left else 0.0, cost)))
        return Reservation(tuple(out), tuple(tpm), tuple(caps))

    def _estimate_cost(self, route: Route, prompt: int, output: int) -> float:
        """The estimate's cost at the route's first deployment's price (0 when unpriced or priced per hour)."""
        dep = route.groups[0].deployments[0] if route.groups and route.groups[0].deployments else None
        rates = self.prices.of(dep.key, dep.provider, dep.model) if dep is not None else None
        if rates is None or rates.per_hour is not None:
            return 0.0
        return rates.cost(Usage(prompt_tokens=prompt, completion_tokens=output))

    async def reserve(self, record: RequestRecord, route: Route, table: RouteTable) -> Route:
        """Take every charge or raise; returns the route to use (the fallback one when a budget says so)."""
        held = self.charges(record, route)
        if not held.charges:
            return route
        take_now = self._take_now
        refused, wait = take_now(held.charges) if take_now is not None else await self._take(held)
        if refused < 0:
            record.reservation = held
            return route
        charge = held.charges[refused]
        if charge.kind == "rate":
            what = "requests" if charge.key.startswith(self.prefix + "rpm:") else "tokens"
            scope = charge.key.split(":", 4)[-1]
            raise RateLimitedError(f"Rate limit reached for {scope}: {int(charge.limit)} {what} per minute. "
                                   f"Try again in {max(wait, 0.001):.3g} s.", retry_after=wait)
        scope = charge.key[len(self.prefix) + len("spend:"):].rsplit(":", 2)[0]
        if self.fallback is not None and record.model != self.fallback:
            record.budget_fallback = scope
            fallback = table.resolve(self.fallback)
            held = self.charges(record, fallback, budgets=False)
            if held.charges:
                refused, wait = await self._take(held)
                if refused >= 0:
                    raise RateLimitedError("Rate limit reached for the budget fallback model.", retry_after=wait)
                record.reservation = held
            return fallback
        period = charge.key.rsplit(":", 2)[1]
        raise BudgetExceededError(f"Budget exhausted for {scope}: ${charge.limit:g} {_PERIODS.get(period, period)}.",
                                  retry_after=wait or None)

    def provider_charges(self, record: RequestRecord, dep: Deployment) -> Reservation:
        """What an attempt on ``dep`` draws on: its provider's rpm, tpm and budget (``providers.yaml``)."""
        rpm, tpm_limit, budget = self.providers[dep.provider]
        p, name = self.prefix, "provider:" + dep.provider
        prompt, output = _estimate(record, self.default_output)
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
            out.append(Charge(f"{p}spend:{name}:{period}:{wid}", "cap", limit, left + TTL_SLACK_S, cost))
        return Reservation(tuple(out), tpm, caps)

    async def take_provider(self, record: RequestRecord, dep: Deployment) -> Reservation | ProviderLimitedError:
        """Take an attempt's provider charges (one atomic take), or say why its provider is over."""
        held = self.provider_charges(record, dep)
        try:
            refused, wait = await self.counters.take(held.charges)
        except StateUnavailableError as exc:
            if self.fail_open:
                return Reservation((), (), ())
            return ProviderLimitedError(f"provider {dep.provider!r}: its limits cannot be checked right now ({exc})",
                                        budget=False, retry_after=1.0)
        if refused < 0:
            return held
        charge = held.charges[refused]
        if charge.kind == "rate":
            what = "requests" if charge.key.startswith(self.prefix + "rpm:") else "tokens"
            return ProviderLimitedError(f"Rate limit reached for provider {dep.provider!r}: {int(charge.limit)} "
                                        f"{what} per minute.", budget=False, retry_after=max(wait, 0.001))
        period = charge.key.rsplit(":", 2)[1]
        return ProviderLimitedError(f"Budget exhausted for provider {dep.provider!r}: ${charge.limit:g} "
                                    f"{_PERIODS.get(period, period)}.", budget=True, retry_after=wait or None)

    def keep(self, record: RequestRecord, held: Reservation) -> None:
        """The attempt that answered: its provider charges are settled with the request's at finish."""
        if not held.charges:
            return
        mine = record.reservation
        if mine is None:
            record.reservation = held
            return
        n = len(mine.charges)
        record.reservation = Reservation(mine.charges + held.charges, mine.tokens + tuple(i + n for i in held.tokens),
                                         mine.caps + tuple(i + n for i in held.caps))

    def give_back(self, held: Reservation, *, sent: bool) -> None:
        """A failed attempt: its tokens and spend return; its request too unless ``sent`` (the upstream saw it)."""
        if not sent and held.charges:  # nothing was sent (e.g. the half-open probe was taken): all returns
            self._apply(held, [-c.cost for c in held.charges])
        elif held.tokens or held.caps:
            self._settle(held, 0.0, 0.0)

    async def _take(self, held: Reservation) -> tuple[int, float]:
        """The counters' take; while the backend is away: admitted (fail open) or a 429 (closed)."""
        try:
            return await self.counters.take(held.charges)
        except StateUnavailableError as exc:
            if self.fail_open:
                held.charges, held.tokens, held.caps = (), (), ()  # nothing taken: nothing to settle
                return -1, 0.0
            raise RateLimitedError(f"Rate limits cannot be checked right now ({exc}); try again shortly.",
                                   retry_after=1.0) from None

    def settle(self, record: RequestRecord) -> None:
        """At finish: real tokens and cost minus the estimates (a failed call gives its reservation back)."""
        held = record.reservation
        record.reservation = None
        usage = record.usage
        self._settle(held, usage.total_tokens if usage is not None else 0, record.cost or 0.0)

    def _settle(self, held: Reservation, real_tokens: float, real_cost: float) -> None:
        deltas = [0.0] * len(held.charges)
        for i in held.tokens:
            deltas[i] = real_tokens - held.charges[i].cost
        for i in held.caps:
            deltas[i] = real_cost - held.charges[i].cost
        self._apply(held, deltas)

    def _apply(self, held: Reservation, deltas: list[float]) -> None:
        if not held.caps and not any(deltas):  # an exact estimate still needs its budget alerts checked
            return
        adjust_now = self._adjust_now
        if adjust_now is not None:  # in-process: no I/O, settled now
            adjust_now(held.charges, tuple(deltas))
            if held.caps:
                value_now, alerts = self.counters.value_now, self.alerts  # type: ignore[attr-defined]
                for i in held.caps:
                    charge = held.charges[i]
                    spent = value_now(charge.key)
                    if spent >= alerts.floor * charge.limit:  # below the lowest threshold nothing can cross
                        alerts.check(charge.key[self._spend:], spent, charge.limit)
            return
        task = asyncio.get_running_loop().create_task(self._adjust(held, tuple(deltas)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _adjust(self, held: Reservation, deltas: tuple[float, ...]) -> None:
        try:
            if any(deltas):
                await self.counters.adjust(held.charges, deltas)
            if held.caps:  # the spend now, for alerts: one more read, off the request path
                caps = [held.charges[i] for i in held.caps]
                spent = await self.counters.read(tuple(c.key for c in caps))
                for charge, value in zip(caps, spent, strict=True):
                    self.alerts.check(charge.key[self._spend:], value, charge.limit)
        except StateUnavailableError as exc:
            log.warning("limits: could not settle a reservation (%s); its estimate stays counted", exc)

    async def usage(self, keys: Iterable[VirtualKey], now: float) -> tuple[list[dict[str, Any]], str | None]:
        """Every configured budget and every unrevoked key's budget with its current window's use
        (``GET /admin/budgets``), and why the use could not be read (None: it was). ``used_usd`` is the
        window's counter: settled spend plus the estimates of requests still in flight."""
        rows, counters = self.budget_rows(keys, now)
        try:
            used: tuple[float | None, ...] = await self.counters.read(tuple(counters)) if counters else ()
            error = None
        except StateUnavailableError as exc:
            used, error = (None,) * len(rows), f"The limits backend cannot be read now: {exc}"
        for row, value in zip(rows, used, strict=True):
            row["used_usd"] = None if value is None else round(value, 9)
            row["remaining_usd"] = None if value is None else round(max(row["limit_usd"] - value, 0.0), 9)
        return rows, error

    def budget_rows(self, keys: Iterable[VirtualKey], now: float) -> tuple[list[dict[str, Any]], list[str]]:
        """Every configured budget and every unrevoked key's budget (no I/O): rows of budget, scope, name,
        limit_usd, period, window, resets_in_s (None: ``total``), and each row's counter key."""
        rows: list[dict[str, Any]] = []
        for (scope, name), b in self.budgets.items():
            rows.append({"budget": f"{scope}:{name}" if name else scope, "scope": scope, "name": name,
                         "limit_usd": b.limit_usd, "period": b.period})
        for provider, (_, _, cap) in self.providers.items():
            if cap is not None:  # providers.yaml budget:
                rows.append({"budget": "provider:" + provider, "scope": "provider", "name": provider,
                             "limit_usd": cap[0], "period": cap[1]})
        for key in keys:
            if key.budget_usd is not None and key.revoked_at is None:
                rows.append({"budget": "key:" + key.id, "scope": "key", "name": key.id, "key_name": key.name,
                             "limit_usd": key.budget_usd, "period": key.budget_period})
        counters = []
        for row in rows:
            wid, left = compute(row["period"], now)
            row["window"], row["resets_in_s"] = wid, (round(left, 3) if left else None)
            counters.append(f"{self.prefix}spend:{row['budget']}:{row['period']}:{wid}")
        return rows, counters

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.alerts.drain()

    async def aclose(self) -> None:
        await self.drain()
        if self.owns_counters:
            await self.counters.aclose()


def _estimate(record: RequestRecord, default_output: int) -> tuple[int, int]:
    """(prompt tokens, answer tokens) a request may use, before it is sent."""
    payload: Any = record.payload or {}
    out = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if type(out) is not int or out < 0:  # parsed JSON: a bool is no token count
        out = default_output
    return len(record.body or b"") // BYTES_PER_TOKEN, out


def limiter_for(config: Config, prices: Prices, *, previous: Limiter | None = None,
                shared_path: str | None = None) -> Limiter | None:
    """The limiter the config asks for; None when nothing is limited (no limits, no budgets, no virtual keys).

    ``shared_path``: without Redis, a SQLite file the workers of ``--workers N`` share their counters in.
    """
    gateway = config.gateway
    if (gateway.rate_limits is None and gateway.budgets is None and not gateway.auth.virtual_keys
            and not any(p.rate_limits is not None or p.budget is not None for p in config.providers.values())):
        return None
    rl = gateway.rate_limits
    url = (rl.url if rl else None) or gateway.state.url
    if previous is not None and previous.owns_counters and _same_backend(previous, url):
        counters = previous.counters
        previous.owns_counters = False
    elif not url and shared_path:
        from labgate.state.counters import SQLiteCounters

        counters = SQLiteCounters(shared_path)
    elif url:
        from labgate.state.counters import RedisCounters
        from labgate.state.redis import RedisLink

        s = gateway.state
        link = RedisLink(url, timeout_s=s.timeout_s, retry_s=s.retry_s, max_connections=s.max_connections)
        link.source = url
        counters = RedisCounters(link, max_connections=s.max_connections)
    else:
        from labgate.state.counters import MemoryCounters

        counters = MemoryCounters()
    limiter = Limiter(config, counters, prices)
    if previous is not None and counters is previous.counters:  # the same counters: what was reported stays so
        limiter.alerts.counts, limiter.alerts._seen = previous.alerts.counts, previous.alerts._seen
    if previous is not None and previous.history is not None:  # the new limiter seeds from the same history
        limiter.history = previous.history
        if hasattr(counters, "marker"):
            counters.marker = None
            if limiter.budgets or limiter.providers or limiter.keyed_budgets:
                limiter._watch_empty()
    return limiter


def _same_backend(previous: Limiter, url: str | None) -> bool:
    link = getattr(previous.counters, "link", None)
    return (link is None and not url) or (link is not None and link.source == url)
