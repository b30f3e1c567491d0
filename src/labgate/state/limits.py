"""Rate limits and budgets on the request path: reserve before the call, settle after (docs/limits.md).

``Limiter.plan`` (no I/O) says whether a request draws on anything: the gateway's
and its model's rpm/tpm (``rate_limits:``), its virtual key's rpm/tpm and
budget, and the budgets of its key's project, its model and the gateway
(``budgets:``); which ones is a plan compiled once per model and key
(state/plan.py). ``reserve`` takes them all at once (state/counters.py: one
script call on Redis; in process, the plan's compiled take on its cells): one
request for rpm, an estimate for tpm (prompt bytes / 4 plus ``max_tokens``, or
``rate_limits.default_output_tokens``) and the estimate's cost for budgets. Refused: 429 ``rate_limit_exceeded`` with
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
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from labgate.errors import BudgetExceededError, ProviderLimitedError, RateLimitedError
from labgate.providers.base import Usage
from labgate.state.alerts import Alerts
from labgate.state.base import KEY_PREFIX, Counters, StateUnavailableError
from labgate.state.budgets import compute
from labgate.state.counters import MemoryCounters
from labgate.state.plan import BYTES_PER_TOKEN, NOTHING, Planner, Reservation, Taken

if TYPE_CHECKING:
    from labgate.config.load import Config
    from labgate.cost import Prices
    from labgate.keys import VirtualKey
    from labgate.record import RequestRecord
    from labgate.routing.table import Deployment, Route, RouteTable

__all__ = ["NOTHING", "Limiter", "Reservation", "limiter_for"]
log = logging.getLogger("labgate.limits")
_PERIODS = {"day": "today", "week": "this week", "month": "this month", "total": "in total"}


class Limiter:
    def __init__(self, config: Config, counters: Counters, prices: Prices) -> None:
        gateway = config.gateway
        rl, budgets = gateway.rate_limits, gateway.budgets
        self.counters = counters
        self._take_now = getattr(counters, "take_now", None)  # in-process: the take without a coroutine
        self._adjust_now = getattr(counters, "adjust_now", None)  # in-process: settled at once, no task
        self._settle_now = getattr(counters, "settle_now", None)  # in-process: settled in one pass
        self.in_process = self._take_now is not None  # the request path may call reserve_now (no I/O)
        self.prices = prices
        self.prefix = f"{KEY_PREFIX}:{{limits:{rl.namespace if rl else 'default'}}}:"
        self._spend = len(self.prefix) + len("spend:")  # a budget key's "scope:name:period:window" starts here
        self.fail_open = rl is None or rl.on_backend_error == "open"
        self.alerts = Alerts(budgets.alert_thresholds if budgets else (0.5, 0.8, 1.0),
                             budgets.alert_webhook if budgets else None)
        # cells: the in-process counters, whose cells compiled plans hold (state/plan.py)
        self._cells = counters if isinstance(counters, MemoryCounters) else None  # plans take their cells
        self.planner = Planner(config, self.prefix, prices, cells=self._cells, alert_floor=self.alerts.floor)
        if self._cells is not None:
            self._cells.on_prune = self.planner.forget  # pruned cells: plans are compiled again
        planner = self.planner
        self.default_output, self.budgets = planner.default_output, planner.budgets
        self.fallback = budgets.fallback_model if budgets and budgets.on_exhausted == "fallback" else None
        # provider name → (rpm, tpm, budget) from providers.yaml; only providers that set one
        self.providers: dict[str, tuple[int | None, int | None, tuple[float, str] | None]] = {}
        for pname, pconf in config.providers.items():
            prl, pb = pconf.rate_limits, pconf.budget
            if (prl is not None and (prl.rpm or prl.tpm)) or pb is not None:
                self.providers[pname] = (prl.rpm if prl else None, prl.tpm if prl else None,
                                         (pb.limit_usd, pb.period) if pb is not None else None)
        self.keyed_budgets = config.gateway.auth.virtual_keys  # keys may carry budgets of their own
        self.static = bool(planner.rpm or planner.tpm or planner.model_exact or planner.model_globs or self.budgets)
        self._pending: set[asyncio.Task[None]] = set()
        self.owns_counters = True  # false once a reload handed them to the next Runtime's limiter
        self.history: Any = None  # the history store budgets are seeded from (state/seed.py); None: not yet
        self._seeding = asyncio.Lock()

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

    def charges(self, record: RequestRecord, route: Route, *, budgets: bool = True) -> Reservation:
        """What ``record`` draws on, as charges (any backend): its plan with its estimate filled in."""
        now, planner = time.time(), self.planner
        plan = planner.plan(record.model or "", record.api_key, route, now)
        prompt, output = planner.estimate(record)
        cost = planner.cost(plan.rates, prompt, output) if budgets and plan.cap_charges else 0.0
        return planner.charges(plan, prompt + output, cost, now, budgets=budgets)

    def _as_charges(self, held: Taken | Reservation) -> Reservation:
        """A reservation as charges (one taken from a plan's cells gets its plan's charges)."""
        if isinstance(held, Reservation):  # (a Taken is a plain tuple)
            return held
        plan, tokens, cost = held
        return self.planner.charges(plan, tokens, cost, time.time())

    async def reserve(self, record: RequestRecord, route: Route, table: RouteTable) -> Route:
        """Take every charge or raise; returns the route to use (the fallback one when a budget says so)."""
        if self._take_now is not None:
            return self.reserve_now(record, route, table)
        held = self.charges(record, route)
        if not held.charges:
            return route
        refused, wait, taken = await self._take(held)
        if refused < 0:
            record.reservation = taken
            return route
        fallback, held = self._refused(record, held, refused, wait, table)
        if held.charges:
            refused, wait, taken = await self._take(held)
            self._fallback_taken(record, taken, refused, wait)
        return fallback

    def reserve_now(self, record: RequestRecord, route: Route, table: RouteTable) -> Route:
        """:meth:`reserve` on in-process counters (``in_process``): the same, without a coroutine; on their
        cells (state/plan.py) when they have them, with the charges only when a take does not fit."""
        if self._cells is not None:
            key, model = record.api_key, record.model or ""  # (pairs: no tuple built)
            planner, now = self.planner, time.time()
            plans = planner.plans.get(model)
            plan = None if plans is None else plans.get("" if key is None else key.id)
            if plan is None or plan.key is not key or plan.route is not route or now >= plan.ends:
                plan = planner.compile(model, key, route, now)
            # Planner.estimate, inline (one Python call less per request)
            payload: Any = record.payload or {}
            output = payload.get("max_completion_tokens") or payload.get("max_tokens")
            if type(output) is not int or output < 0:  # parsed JSON: a bool is no token count
                output = planner.default_output
            prompt = len(record.body or b"") // BYTES_PER_TOKEN
            tokens, rates = prompt + output, plan.rates
            cost = 0.0 if rates is None else prompt * rates[0] + output * rates[1] if type(rates) is tuple else \
                planner.cost(rates, prompt, output)
            if plan.take(tokens, cost):  # type: ignore[misc]  # compiled on in-process cells
                record.reservation = (plan, tokens, cost)  # a Taken
                return route
            held = planner.charges(plan, tokens, cost, now)  # not taken: the general take says why
        else:
            held = self.charges(record, route)
        take_now = self._take_now
        assert take_now is not None, "reserve_now needs in-process counters"
        if not held.charges:
            return route
        refused, wait = take_now(held.charges)
        if refused < 0:
            record.reservation = held
            return route
        fallback, held = self._refused(record, held, refused, wait, table)
        if held.charges:
            refused, wait = take_now(held.charges)
            self._fallback_taken(record, held, refused, wait)
        return fallback

    def _refused(self, record: RequestRecord, held: Reservation, refused: int, wait: float,
                 table: RouteTable) -> tuple[Route, Reservation]:
        """A refused take: raise its 429, or (budgets.on_exhausted: fallback) the fallback route and its charges."""
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
            return fallback, self.charges(record, fallback, budgets=False)
        period = charge.key.rsplit(":", 2)[1]
        raise BudgetExceededError(f"Budget exhausted for {scope}: ${charge.limit:g} {_PERIODS.get(period, period)}.",
                                  retry_after=wait or None)

    @staticmethod
    def _fallback_taken(record: RequestRecord, held: Reservation, refused: int, wait: float) -> None:
        if refused >= 0:
            raise RateLimitedError("Rate limit reached for the budget fallback model.", retry_after=wait)
        record.reservation = held

    def provider_charges(self, record: RequestRecord, dep: Deployment) -> Reservation:
        """What an attempt on ``dep`` draws on: its provider's rpm, tpm and budget (``providers.yaml``)."""
        return self.planner.provider_charges(record, dep, self.providers[dep.provider])

    async def take_provider(self, record: RequestRecord, dep: Deployment) -> Reservation | ProviderLimitedError:
        """Take an attempt's provider charges (one atomic take), or say why its provider is over."""
        held = self.provider_charges(record, dep)
        try:
            refused, wait = await self.counters.take(held.charges)
        except StateUnavailableError as exc:
            if self.fail_open:
                return NOTHING
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
        if record.reservation is None:
            record.reservation = held
            return
        mine = self._as_charges(record.reservation)
        n = len(mine.charges)
        record.reservation = Reservation(mine.charges + held.charges, mine.tokens + tuple(i + n for i in held.tokens),
                                         mine.caps + tuple(i + n for i in held.caps))

    def settle_served(self, record: RequestRecord, failed: Deployment, usage: Usage | None, partial: str) -> None:
        """Stream rescue: the broken attempt's provider charges settle now with what it served.

        The broken stream served the prompt and ``partial`` (the text the client got from it): its
        ``usage`` when the stream reported one, else the prompt estimate plus ``partial``'s bytes / 4,
        priced at ``failed``'s rates. Those charges leave the reservation, so the continuation's
        provider is settled at finish with what it served (the record's usage and cost), not both
        with the whole answer.
        """
        if record.reservation is None or failed.provider not in self.providers:
            return
        held = self._as_charges(record.reservation)
        owner = "provider:" + failed.provider
        start, seen, mine = len(self.prefix), set(), []
        for i, charge in enumerate(held.charges):  # its charges come first (the continuation's were kept after)
            scope = charge.key[start:].split(":", 1)[1]
            if (scope == owner or scope.startswith(owner + ":")) and charge.key not in seen:
                seen.add(charge.key)
                mine.append(i)
        if not mine:
            return
        if usage is None:
            prompt, _ = self.planner.estimate(record)
            usage = Usage(prompt_tokens=prompt, completion_tokens=-(-len(partial.encode()) // BYTES_PER_TOKEN))
        rates = self.prices.of(failed.key, failed.provider, failed.model)
        cost = 0.0 if rates is None or rates.per_hour is not None else rates.cost(usage)
        index = {i: n for n, i in enumerate(mine)}
        served = Reservation(tuple(held.charges[i] for i in mine), tuple(index[i] for i in held.tokens if i in index),
                             tuple(index[i] for i in held.caps if i in index))
        rest = [i for i in range(len(held.charges)) if i not in index]
        kept = {i: n for n, i in enumerate(rest)}
        record.reservation = Reservation(tuple(held.charges[i] for i in rest),
                                         tuple(kept[i] for i in held.tokens if i in kept),
                                         tuple(kept[i] for i in held.caps if i in kept))
        self._settle(served, usage.total_tokens, cost)

    def give_back(self, held: Reservation, *, sent: bool) -> None:
        """A failed attempt: its tokens and spend return; its request too unless ``sent`` (the upstream saw it)."""
        if not sent and held.charges:  # nothing was sent (e.g. the half-open probe was taken): all returns
            self._apply(held, [-c.cost for c in held.charges])
        elif held.tokens or held.caps:
            self._settle(held, 0.0, 0.0)

    async def _take(self, held: Reservation) -> tuple[int, float, Reservation]:
        """The counters' take and what it took; while the backend is away: admitted with nothing taken (fail
        open) or a 429 (closed)."""
        try:
            refused, wait = await self.counters.take(held.charges)
            return refused, wait, held
        except StateUnavailableError as exc:
            if self.fail_open:
                return -1, 0.0, NOTHING
            raise RateLimitedError(f"Rate limits cannot be checked right now ({exc}); try again shortly.",
                                   retry_after=1.0) from None

    def settle(self, record: RequestRecord) -> None:
        """At finish: real tokens and cost minus the estimates (a failed call gives its reservation back)."""
        held = record.reservation
        record.reservation = None
        usage = record.usage
        real_tokens = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
        real_cost = record.cost or 0.0
        if type(held) is tuple:  # a Taken (from a plan's cells, not a Reservation): settled on them
            plan, tokens, cost = held
            if plan.settle(tokens, cost, real_tokens, real_cost):  # a Taken's plan: compiled cells
                self._alert_plan(plan)
            return
        settle_now = self._settle_now
        if settle_now is None:
            self._settle(held, real_tokens, real_cost)
        elif (near := settle_now(held.charges, held.tokens, held.caps, real_tokens, real_cost,
                                 self.alerts.floor)) is not None:
            self._alert(held, near)

    def _alert(self, held: Reservation, spent: list[float]) -> None:
        """Budget alerts for the spend after an in-process settlement (``spent``: per budget charge)."""
        alerts, floor = self.alerts, self.alerts.floor
        for i, value in zip(held.caps, spent, strict=True):
            charge = held.charges[i]
            if value >= floor * charge.limit:  # below the lowest threshold nothing can cross
                alerts.check(charge.key[self._spend:], value, charge.limit)

    def _alert_plan(self, plan: Any) -> None:
        """Budget alerts for the spend in a plan's cells after its settlement."""
        cells = self._cells
        assert cells is not None, "a plan's cells are in-process counters"
        for (cell, limit, alert_at), scope in zip(plan.caps, plan.scopes, strict=True):
            value = cells.spent(cell)
            if value >= alert_at:  # below the lowest threshold nothing can cross
                self.alerts.check(scope, value, limit)

    def _settle(self, held: Reservation, real_tokens: float, real_cost: float) -> None:
        settle_now = self._settle_now
        if settle_now is not None:  # in-process: one pass over the counters, no deltas list
            near = settle_now(held.charges, held.tokens, held.caps, real_tokens, real_cost, self.alerts.floor)
            if near is not None:
                self._alert(held, near)
            return
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
            caps = [held.charges[i] for i in held.caps]
            adjust_read = getattr(self.counters, "adjust_read", None)
            if adjust_read is not None:  # Redis: settled and the budgets' spend read back in one script call
                spent = await adjust_read(held.charges, deltas)
            else:
                if any(deltas):
                    await self.counters.adjust(held.charges, deltas)
                # the spend now, for alerts: one more read, off the request path
                spent = await self.counters.read(tuple(c.key for c in caps)) if caps else ()
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
