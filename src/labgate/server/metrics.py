"""``GET /metrics``: Prometheus metrics (text exposition format 0.0.4).

The route exists when ``metrics.enabled`` (the default); otherwise it is an
unknown path (404). With ``metrics.require_key`` it needs the master key, as
the admin API does; otherwise no key is needed, as for ``/health``.
The request counters come from :class:`~labgate.telemetry.metrics.Metrics`;
the history writer's counters (``labgate_history_*``) follow when history is on.
Under ``--workers N`` the scraped worker adds its siblings' texts (telemetry/group.py).
The budget gauges (telemetry/budgets.py) describe counters the workers share: the scraped
worker reads them once and appends them after that sum, so they are never counted N times.
"""

from __future__ import annotations

import time

from labgate.auth import admit_admin
from labgate.errors import LabgateError
from labgate.gateway import Gateway
from labgate.server.envelopes import openai_error
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id
from labgate.telemetry.metrics import CONTENT_TYPE, Metrics

METRICS = "/metrics"


def metrics_routes(gateway: Gateway) -> dict[str, dict[str, Handler]]:
    """The ``/metrics`` route for ``server/app.py``'s table; none when metrics are off."""
    metrics = gateway.metrics
    if metrics is None:
        return {}

    async def scrape(request: Request) -> Response:
        rid = request_id(request.headers)
        rt = gateway.runtime
        if rt.config.gateway.metrics.require_key:  # read per scrape: a reload may change it
            try:
                admit_admin(rt.auth, request.headers, request.client)
            except LabgateError as exc:
                return openai_error(exc, rid)
        budgets = await budget_gauges(gateway, metrics)  # first: a failed read is counted in this scrape
        text = exposition(gateway, metrics)
        if metrics.group is not None:  # --workers N: the whole process group's counts
            text = await metrics.group.gather(text)
        text += budgets
        return Response(200, [("content-type", CONTENT_TYPE), ("x-request-id", rid), ("cache-control", "no-store")],
                        text.encode())

    return {METRICS: {"GET": scrape}}


def exposition(gateway: Gateway, metrics: Metrics) -> str:
    """Every metric of this process, history's counters included when history is on."""
    text = metrics.render()
    if gateway.history is not None:
        text += gateway.history.prometheus()
    if gateway.replicas is not None:  # config sync and shared circuits (server/replicas.py)
        text += gateway.replicas.prometheus()
    limiter = gateway.runtime.limiter
    if limiter is not None and limiter.alerts.counts:  # budget alerts (state/alerts.py)
        text += limiter.alerts.prometheus()
    if limiter is not None and _has_budgets(gateway):  # this process's failed spend reads (telemetry/budgets.py)
        text += metrics.budgets.counters()
    return text


async def budget_gauges(gateway: Gateway, metrics: Metrics) -> str:
    """Limit, spend and window end of every budget: shared counters, so read by the scraped worker only."""
    limiter = gateway.runtime.limiter
    if limiter is None or not _has_budgets(gateway):
        return ""
    ring = gateway.runtime.auth.keyring
    return await metrics.budgets.render(limiter, ring.by_hash.values() if ring is not None else (), time.time())


def _has_budgets(gateway: Gateway) -> bool:
    """Budgets configured, or a virtual key with a budget of its own."""
    rt = gateway.runtime
    limiter = rt.limiter
    if limiter is None:
        return False
    if limiter.budgets or any(cap is not None for _, _, cap in limiter.providers.values()):
        return True
    ring = rt.auth.keyring
    return bool(limiter.keyed_budgets and ring is not None
                and any(k.budget_usd is not None for k in ring.by_hash.values()))
