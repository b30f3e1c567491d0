"""Budget spend that survives restarts: each budget's current window seeded from the history's cost.

Budget counters live in the state backend: in-process ones start empty at
every start, and a Redis that restarted without persistence is empty too.
The history is the durable record of what was spent, so at start (before
the gateway listens) and when the Redis backend comes back after an outage,
each budget's counter for its current window is set to the history's cost
sum for that window and scope: the key (``key_id``), its project (through
the keys table), the model as requested, the provider, or everything. A
counter that already exists is left alone (another replica's counters are
live, and include reservations the history has not seen yet), so seeding
never lowers or doubles a spend.

Records still in the history writer's queue when a process stops are not in
the sum: the spend a restart can forget is what the last flush had not
written (``store.flush_interval_s``).
"""

from __future__ import annotations

import calendar
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from labgate.state.budgets import TTL_SLACK_S, compute
from labgate.store.query import Filter
from labgate.store.schema import KEYS_TABLE, TABLE

if TYPE_CHECKING:
    from labgate.state.limits import Limiter
    from labgate.store.base import Store

# scope → the history column its budgets are named by (global: none)
_COLUMNS = {"global": "''", "key": "r.key_id", "project": "k.project", "model": "r.model", "provider": "r.provider"}


def window_start(period: str, now: float) -> float | None:
    """When the window holding ``now`` began (UTC); None for ``total`` (from the beginning)."""
    if period == "total":
        return None
    _, left = compute(period, now)
    end = now + left
    if period == "day":
        return end - 86400
    if period == "week":
        return end - 7 * 86400
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


async def budget_seeds(limiter: Limiter, store: Store, *, now: float | None = None
                       ) -> list[tuple[str, float, float]]:
    """(counter key, spend so far in its window, seconds the counter lives; 0: forever) per budget with spend."""
    now = time.time() if now is None else now
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)  # (scope, period) → names
    for (kind, name), budget in limiter.budgets.items():
        wanted[kind, budget.period].add(name or "")
    for provider, (_, _, cap) in limiter.providers.items():
        if cap is not None:
            wanted["provider", cap[1]].add(provider)
    rows = await store.fetch(f"SELECT id, budget_period FROM {KEYS_TABLE} WHERE budget_usd IS NOT NULL "
                             "AND revoked_at IS NULL", ())
    for row in rows:
        wanted["key", row["budget_period"] or "month"].add(row["id"])
    seeds: list[tuple[str, float, float]] = []
    for (scope, period), names in wanted.items():
        clause, params = Filter(since=window_start(period, now)).where(store)
        found = await store.fetch(
            f"SELECT {_COLUMNS[scope]} AS grp, sum(coalesce(r.cost, 0)) AS cost FROM {TABLE} r "
            f"LEFT JOIN {KEYS_TABLE} k ON k.id = r.key_id{clause} GROUP BY 1", params)
        wid, left = compute(period, now)
        ttl = left + TTL_SLACK_S if left else 0.0
        for row in found:
            name, cost = row["grp"] or "", float(row["cost"] or 0.0)
            if name in names and cost > 0:
                scoped = "global" if scope == "global" else f"{scope}:{name}"
                seeds.append((f"{limiter.prefix}spend:{scoped}:{period}:{wid}", cost, ttl))
    return seeds
