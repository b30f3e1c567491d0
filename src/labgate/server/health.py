"""``/health/*``: liveness, readiness and each provider's reachability. No key needed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from labgate.errors import LabgateError
from labgate.gateway import Gateway
from labgate.providers.base import ModelLister
from labgate.runtime import Runtime
from labgate.server.envelopes import JSON
from labgate.server.http import Request, Response

_PROBE_TIMEOUT_S = 3.0
_PROBE_CACHE_S = 2.0


def _json(status: int, data: Any) -> Response:
    return Response(status, [JSON, ("cache-control", "no-store")], orjson.dumps(data))


class HealthSurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._probed: tuple[float, Any, dict[str, Any]] | None = None

    async def health(self, request: Request) -> Response:
        rt = self.gateway.runtime
        return _json(200, {"status": "ok", "providers": len(rt.adapters), "models": len(rt.table.routes)})

    async def liveness(self, request: Request) -> Response:
        return _json(200, {"status": "alive"})

    async def readiness(self, request: Request) -> Response:
        routes = len(self.gateway.runtime.table.routes)
        if routes == 0:
            return _json(503, {"status": "not_ready", "reason": "no model is routable"})
        return _json(200, {"status": "ready", "models": routes})

    async def providers(self, request: Request) -> Response:
        rt = self.gateway.runtime
        now = time.monotonic()
        if self._probed and self._probed[1] is rt and now - self._probed[0] < _PROBE_CACHE_S:
            return _json(200, self._probed[2])
        names = list(rt.adapters)
        results = await asyncio.gather(*(self._probe(rt, name) for name in names))
        report = {"providers": dict(zip(names, results, strict=True))}
        for name, provider in rt.config.providers.items():
            if provider.status != "active":
                report["providers"][name] = {"status": "inactive", "reachable": None}
        self._probed = (now, rt, report)
        return _json(200, report)

    async def _probe(self, rt: Runtime, name: str) -> dict[str, Any]:
        adapter = rt.adapters[name]
        configured = [m.name for m in rt.config.providers[name].models]
        if not isinstance(adapter, ModelLister):
            return {"status": "active", "reachable": None, "configured_models": configured}
        started = time.perf_counter()
        try:
            models = await adapter.list_models(timeout=_PROBE_TIMEOUT_S)
        except LabgateError as exc:
            return {"status": "active", "reachable": False, "error": exc.message,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "configured_models": configured}
        return {"status": "active", "reachable": True,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "models": models, "configured_models": configured,
                "missing_models": [m for m in configured if m not in models]}
