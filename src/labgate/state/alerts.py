"""Budget alerts: when a budget's spend passes a threshold (50/80/100 % by default), say so once.

After a request's cost is settled, the limiter hands the spend of each budget it drew on here.
Each (budget window, threshold) is reported once per process: a warning log line, a count in
``labgate_budget_alerts_total{budget,threshold}`` on ``/metrics``, and, when
``budgets.alert_webhook`` is set, a JSON POST to it (fire and forget, ``WEBHOOK_TIMEOUT_S``).
Replicas each report a crossing they see; a webhook consumer may get one per replica.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request

import orjson

log = logging.getLogger("labgate.limits")
WEBHOOK_TIMEOUT_S = 5.0
MAX_REMEMBERED = 100_000  # (window, threshold) pairs kept; past it the memory starts again


class Alerts:
    """Lives as long as the process's limit counters (a reload with the same backend keeps it)."""

    def __init__(self, thresholds: tuple[float, ...], webhook: str | None) -> None:
        self.thresholds = tuple(sorted(thresholds))
        self.floor = self.thresholds[0] if self.thresholds else float("inf")  # spend below floor × limit: no alert
        self.webhook = webhook
        self.counts: dict[tuple[str, float], int] = {}
        self._seen: set[tuple[str, float]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def check(self, window_key: str, spent: float, limit: float) -> None:
        """``window_key``: ``scope:name:period:window`` (e.g. ``model:gpt-4o:month:m202612``)."""
        crossed = [t for t in self.thresholds if spent >= t * limit and (window_key, t) not in self._seen]
        if not crossed:
            return
        if len(self._seen) > MAX_REMEMBERED:
            self._seen.clear()
        self._seen.update((window_key, t) for t in crossed)
        top = crossed[-1]
        budget, period, window = window_key.rsplit(":", 2)
        self.counts[(budget, top)] = self.counts.get((budget, top), 0) + 1
        log.warning("budget alert: %s has spent $%.4f of $%g (%d%%) this %s (%s)", budget, spent, limit,
                    round(spent / limit * 100), period, window)
        if self.webhook is not None:
            body = orjson.dumps({"budget": budget, "period": period, "window": window, "threshold": top,
                                 "spent_usd": spent, "limit_usd": limit})
            task = asyncio.get_running_loop().create_task(self._post(body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, body: bytes) -> None:
        assert self.webhook is not None
        request = urllib.request.Request(self.webhook, data=body, method="POST",
                                         headers={"content-type": "application/json"})
        try:
            await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S).close())
        except Exception as exc:  # the hook is best effort: a failure is logged, never raised
            log.warning("budget alert: the webhook failed (%s)", exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def prometheus(self) -> str:
        lines = ["# HELP labgate_budget_alerts_total Budget thresholds passed (docs/limits.md).",
                 "# TYPE labgate_budget_alerts_total counter"]
        for (budget, threshold), count in sorted(self.counts.items()):
            name = budget.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            lines.append(f'labgate_budget_alerts_total{{budget="{name}",threshold="{threshold:g}"}} {count}')
        return "\n".join(lines) + "\n"
