"""Spend against budgets on ``/metrics``: one gauge set per configured budget, read at scrape time.

For every budget the limiter enforces (``budgets.limits``, a provider's ``budget:``, and a
virtual key's ``budget_usd``) a scrape answers with::

    labgate_budget_limit_usd{budget="model:gpt-4o",scope="model",period="day"}          the limit
    labgate_budget_spend_usd{…}                the current window's counter, as the limiter knows it
    labgate_budget_window_end_seconds{…}       when the window ends (Unix time; none for ``total``)

so PromQL can project the burn: spend + rate × (window end − now) against the limit
(``labgate:budget_spend_usd:projected`` in deploy/prometheus). The spend is the same counter
the limiter takes from (settled spend plus the estimates of requests in flight), read the way
``GET /admin/budgets`` reads it (``Limiter.usage``: one MGET on Redis, one read of the shared
SQLite file under ``--workers N``, a dict lookup in process). It is read when the scrape comes,
never on the request path, and for at most :data:`READ_TIMEOUT_S`; when the counters cannot be
read (Redis away, or slow) the spend series are left out, the limit and window series stay,
``labgate_budget_read_errors_total`` counts the failure, and the scrape still answers 200.

Cardinality: one series per configured budget, plus one per virtual key *that has a budget of
its own*, at most :data:`MAX_KEY_SERIES` of them (lowest key ids first, so the set is stable
between scrapes); the others are counted in ``labgate_budget_series_omitted``.

Under ``--workers N`` these gauges describe counters every worker shares, so only the worker
that answers the scrape reads and appends them, after the siblings' texts have been added up
(server/metrics.py); summing them per worker would multiply them by N. The error counter is per
process and is summed like any other counter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labgate.keys import VirtualKey
    from labgate.state.limits import Limiter

log = logging.getLogger("labgate.metrics")
READ_TIMEOUT_S = 2.0  # a scrape waits at most this long for the budgets' counters
MAX_KEY_SERIES = 1000  # virtual keys with a budget that get series of their own; the rest are counted as omitted
SPEND = "labgate_budget_spend_usd"
LIMIT = "labgate_budget_limit_usd"
WINDOW_END = "labgate_budget_window_end_seconds"
ERRORS = "labgate_budget_read_errors_total"
OMITTED = "labgate_budget_series_omitted"


class BudgetGauges:
    """This process's budget gauges: the scrape-time read, and its failures."""

    __slots__ = ("errors", "failing", "max_keys", "timeout_s")

    def __init__(self, *, timeout_s: float = READ_TIMEOUT_S, max_keys: int = MAX_KEY_SERIES) -> None:
        self.timeout_s = timeout_s
        self.max_keys = max_keys
        self.errors = 0  # scrapes whose spend could not be read
        self.failing = False  # the last read failed (a failure is logged once, when it starts)

    async def render(self, limiter: Limiter, keys: Iterable[VirtualKey], now: float) -> str:
        """The gauges of every budget ``limiter`` enforces; ``keys``: the key ring's keys (budgets are
        taken from those with one). Never raises: an unreadable spend leaves its series out."""
        budgeted = sorted((k for k in keys if k.budget_usd is not None and k.revoked_at is None),
                          key=lambda k: k.id)
        omitted = max(len(budgeted) - self.max_keys, 0)
        rows: list[dict[str, Any]]
        try:
            async with asyncio.timeout(self.timeout_s):
                rows, error = await limiter.usage(budgeted[: self.max_keys], now)
        except Exception as exc:  # a scrape never fails for a budget read: counted, and the limits still go out
            error = f"no answer within {self.timeout_s:g} s" if isinstance(exc, TimeoutError) else (
                f"{type(exc).__name__}: {exc}")
            rows = limiter.budget_rows(budgeted[: self.max_keys], now)[0]
        if error is not None:
            self.errors += 1
            if not self.failing:
                log.warning("metrics: budget spend left out of /metrics: %s", error)
            self.failing = True
        elif self.failing:
            log.warning("metrics: budget spend readable again")
            self.failing = False
        if not rows:
            return ""
        limits, spends, ends = [], [], []
        for row in rows:
            labels = f'{{budget="{_escape(row["budget"])}",scope="{row["scope"]}",period="{row["period"]}"}}'
            limits.append(f"{LIMIT}{labels} {float(row['limit_usd'])!r}")
            if row.get("used_usd") is not None:
                spends.append(f"{SPEND}{labels} {float(row['used_usd'])!r}")
            if row.get("resets_in_s"):
                ends.append(f"{WINDOW_END}{labels} {round(now + row['resets_in_s'])}")
        out = [f"# HELP {LIMIT} A budget's limit in USD per window (docs/limits.md).", f"# TYPE {LIMIT} gauge",
               *limits]
        if spends:
            out += [f"# HELP {SPEND} A budget's spend in its current window: settled cost plus the estimates "
                    "of requests in flight.", f"# TYPE {SPEND} gauge", *spends]
        if ends:
            out += [f"# HELP {WINDOW_END} When a budget's current window ends (Unix time; none for period total).",
                    f"# TYPE {WINDOW_END} gauge", *ends]
        out += [f"# HELP {OMITTED} Key budgets without series of their own (past {self.max_keys}).",
                f"# TYPE {OMITTED} gauge", f"{OMITTED} {omitted}"]
        return "\n".join(out) + "\n"

    def counters(self) -> str:
        """This process's read failures (summed across ``--workers N`` like every counter)."""
        return (f"# HELP {ERRORS} Scrapes whose budget spend could not be read (the spend series were left out).\n"
                f"# TYPE {ERRORS} counter\n{ERRORS} {self.errors}\n")


def _escape(value: str) -> str:
    """A label value in the text format (a key id or budget name never needs it; a model name might)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
