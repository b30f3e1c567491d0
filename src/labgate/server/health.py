"""``/health/*``: liveness, readiness and each provider's reachability.

``/health``, ``/health/liveness`` and ``/health/readiness`` need no key.
``/health/providers`` shows its per-provider detail (error text, which can
name internal hosts and ports, and model lists) only to callers the admin
API would admit (``auth.admit_admin``: the master key when auth is on;
loopback clients when it is off); everyone else gets the aggregate: how
many providers answer, and an overall status.

Probes are shared: callers that arrive while one is running wait for it,
and its result serves for ``_PROBE_CACHE_S``, so this unauthenticated route
cannot be used to multiply requests to the upstreams.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from labgate.auth import admit_admin
from labgate.errors import LabgateError
from labgate.gateway import Gateway
from labgate.providers.base import ModelLister
from labgate.runtime import Runtime
from labgate.server.envelopes import JSON
from labgate.server.http import Request, Response

_PROBE_TIMEOUT_S = 3.0
_PROBE_CACHE_S = 2.0
DETAIL_HINT = "send the master key (as for /admin) for each provider's detail"


def _json(status: int, data: Any) -> Response:
    return Response(status, [JSON, ("cache-control", "no-store")], orjson.dumps(data))


class HealthSurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._probed: tuple[float, Any, dict[str, Any]] | None = None
        self._probing: tuple[Runtime, asyncio.Task[dict[str, Any]]] | None = None

    async def health(self, request: Request) -> Response:
        rt = self.gateway.runtime
        return _json(200, {"status": "ok", "providers": len(rt.adapters), "models": len(rt.table.routes)})

    async def liveness(self, request: Request) -> Response:
        return _json(200, {"status": "alive"})

    async def readiness(self, request: Request) -> Response:
        """Ready: not shutting down, a config with a routable model, and (when history is on) a
        history store this process can write. Whether the providers answer does not count: they
        are shared by every replica, so it would empty the load balancer's pool on a provider
        outage (docs/observability.md#readiness)."""
        gateway = self.gateway
        if gateway.draining:
            return _json(503, {"status": "not_ready", "reason": "shutting down"})
        routes = len(gateway.runtime.table.routes)
        if routes == 0:
            return _json(503, {"status": "not_ready", "reason": "no model is routable"})
        if gateway.history is not None:
            stats = gateway.history.stats()  # the error itself (it may name hosts) is for /admin and /metrics
            if not stats["ready"] or stats["last_error"] is not None:
                return _json(503, {"status": "not_ready", "reason": "the history store cannot be written"})
        body: dict[str, Any] = {"status": "ready", "models": routes}
        replicas = gateway.replicas
        if replicas is not None and replicas.rejected is not None:  # still ready: it serves its previous config
            body["config"] = {"status": "rejected", **replicas.rejected}
        return _json(200, body)

    async def providers(self, request: Request) -> Response:
        rt = self.gateway.runtime
        report = await self._report(rt)
        try:
            admit_admin(rt.auth, request.headers, request.client)
        except LabgateError:
            return _json(200, aggregate(report))
        return _json(200, report)

    async def _report(self, rt: Runtime) -> dict[str, Any]:
        probed = self._probed
        if probed and probed[1] is rt and time.monotonic() - probed[0] < _PROBE_CACHE_S:
            return probed[2]
        probing = self._probing
        if probing is None or probing[0] is not rt or probing[1].done():
            probing = self._probing = (rt, asyncio.ensure_future(self._probe_all(rt)))
        return await asyncio.shield(probing[1])

    async def _probe_all(self, rt: Runtime) -> dict[str, Any]:
        names = list(rt.adapters)
        results = await asyncio.gather(*(self._probe(rt, name) for name in names))
        report = {"providers": dict(zip(names, results, strict=True))}
        for name, provider in rt.config.providers.items():
            if provider.status != "active":
                report["providers"][name] = {"status": "inactive", "reachable": None}
        self._probed = (time.monotonic(), rt, report)
        return report

    async def _probe(self, rt: Runtime, name: str) -> dict[str, Any]:
        adapter = rt.adapters[name]
        configured = [m.name for m in rt.config.providers[name].models]
        if not isinstance(adapter, ModelLister):
            return {"status": "active", "reachable": None, "configured_models": configured}
        started = time.perf_counter()
        try:
            models = await adapter.list_models(timeout=_PROBE_TIMEOUT_S)
        except LabgateError as exc:  # its message is already redacted (providers/http.py)
            return {"status": "active", "reachable": False, "error": exc.message,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "configured_models": configured}
        return {"status": "active", "reachable": True,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "models": models, "configured_models": configured,
                "missing_models": [m for m in configured if m not in models]}


def aggregate(report: dict[str, Any]) -> dict[str, Any]:
    """What anyone may see: counts and an overall status, no names, hosts, errors or models."""
    entries = [entry for entry in report["providers"].values() if entry.get("status") == "active"]
    reachable = sum(1 for entry in entries if entry.get("reachable") is True)
    unreachable = sum(1 for entry in entries if entry.get("reachable") is False)
    status = "down" if entries and unreachable == len(entries) else "degraded" if unreachable else "ok"
    return {"status": status, "active": len(entries), "reachable": reachable, "unreachable": unreachable,
            "detail": DETAIL_HINT}
