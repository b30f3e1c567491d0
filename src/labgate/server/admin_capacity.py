"""``/admin/capacity``: capacity, queue, engine load and regions, for operators.

Admission is the admin rule (the master key; loopback only when none is set); the Host
allow-list and Origin check apply as to every route (server/origin.py).

    GET  /admin/capacity                   per provider: in flight / cap, waiting / max_queue, leases across
                                           replicas (state.url), engine load, circuit; per region: totals, down
    POST /admin/capacity/regions/{region}  {"down": true|false}: take the region out of routing, or put it back
    POST /admin/capacity/probe             ?region=  one engine-load poll and one model list per provider,
                                           at most PROBE_TIMEOUT_S each, all at once
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from labgate.auth import admit_admin
from labgate.errors import LabgateError, RecordNotFoundError, RequestError
from labgate.gateway import Gateway
from labgate.providers.base import ModelLister
from labgate.runtime import Runtime
from labgate.server.admin_keys import _body, audit_event
from labgate.server.envelopes import JSON, openai_error
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id

PREFIX = "/admin/capacity"
REGIONS = PREFIX + "/regions/"
PROBE_TIMEOUT_S = 3.0
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def capacity_routes(gateway: Gateway) -> tuple[dict[str, dict[str, Handler]], dict[str, dict[str, Handler]]]:
    """(exact routes, prefix routes) for ``server/app.py``'s table."""
    surface = CapacitySurface(gateway)
    return ({PREFIX: {"GET": surface.show}, PREFIX + "/probe": {"POST": surface.probe}},
            {REGIONS: {"POST": surface.region}})


class CapacitySurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def show(self, request: Request) -> Response:
        return await self._serve(request, lambda rt: state(rt, self.gateway.draining))

    async def region(self, request: Request) -> Response:
        async def run(rt: Runtime) -> dict[str, Any]:
            region = unquote(request.path[len(REGIONS):])
            if not _REGION.match(region):
                raise RequestError("Give one region name: letters, digits, '_', '.', ':' or '-' (at most 64).")
            body = _body(request)
            down = body.get("down")
            if not isinstance(down, bool) or set(body) != {"down"}:
                raise RequestError('The body must be {"down": true} or {"down": false}.', param="down")
            changed = rt.table.mark_region(region, down=down)
            if not changed:
                known = ", ".join(sorted({d.region for d in rt.table.deployments.values() if d.region})) or "none"
                raise RecordNotFoundError(f"No provider is in region {region!r}; regions: {known}.",
                                          code="region_not_found")
            await audit_event(self.gateway, request, "region.down" if down else "region.up", region, None,
                              {"deployments": changed})
            return {"region": region, "down": down, "deployments": changed}
        return await self._serve(request, run)

    async def probe(self, request: Request) -> Response:
        async def run(rt: Runtime) -> dict[str, Any]:
            region = {k: v[-1] for k, v in parse_qs(request.query).items()}.get("region")
            names = [n for n, p in rt.config.providers.items()
                     if p.status == "active" and (region is None or p.region == region)]
            results = await asyncio.gather(*(_probe(rt, name) for name in names))
            return {"region": region, "providers": dict(zip(names, results, strict=True))}
        return await self._serve(request, run)

    async def _serve(self, request: Request, run: Callable[[Runtime], Awaitable[Any]]) -> Response:
        rid = request_id(request.headers)
        try:
            rt = self.gateway.runtime
            admit_admin(rt.auth, request.headers, request.client)
            data = await run(rt)
        except LabgateError as exc:
            return openai_error(exc, rid)
        return Response(200, [JSON, ("x-request-id", rid), ("cache-control", "no-store")], orjson.dumps(data))


async def state(rt: Runtime, draining: bool) -> dict[str, Any]:
    """What ``GET /admin/capacity`` answers."""
    table, now = rt.table, time.monotonic()
    providers: dict[str, Any] = {}
    for name, config in rt.config.providers.items():
        if config.status != "active":
            continue
        deps = [d for d in table.deployments.values() if d.provider == name]
        gate, engine = table.gates.get(name), table.engines.get(name)
        entry: dict[str, Any] = {
            "region": config.region, "priority": config.priority, "failover_only": config.failover_only,
            "in_flight": sum(d.health.inflight for d in deps),
            "max_parallel_requests": config.max_parallel_requests,
            "waiting": gate.waiting if gate else 0, "max_queue": gate.max_queue if gate else None,
            "deployments": {d.key: _circuit(d.health, now) for d in deps},
        }
        if gate is not None and gate.shared is not None:
            entry["shared"] = {**gate.shared.status(), "live_across_replicas": await gate.shared.live()}
        if engine is not None:
            entry["engine"] = engine.status()
        providers[name] = entry
    regions: dict[str, Any] = {}
    for entry in providers.values():
        if entry["region"] is None:
            continue
        region = regions.setdefault(entry["region"], {"providers": 0, "in_flight": 0, "waiting": 0,
                                                      "max_parallel_requests": 0, "down": True})
        region["providers"] += 1
        region["in_flight"] += entry["in_flight"]
        region["waiting"] += entry["waiting"]
        region["max_parallel_requests"] += entry["max_parallel_requests"] or 0
        region["down"] = region["down"] and all(c["marked_down"] for c in entry["deployments"].values())
    queue = rt.config.gateway.queue
    return {"draining": draining, "providers": providers, "regions": regions,
            "queue": None if rt.queue is None else {"timeout_s": queue.timeout_s,
                                                    "max_queue_size": queue.max_queue_size,
                                                    "shared": rt.capacity is not None}}


def _circuit(health: Any, now: float) -> dict[str, Any]:
    marked = health.open_until == math.inf
    return {"in_flight": health.inflight, "failures": health.failures, "marked_down": marked,
            "open_for_s": None if marked or health.open_until <= now else round(health.open_until - now, 3),
            "last_error": health.last_error}


async def _probe(rt: Runtime, name: str) -> dict[str, Any]:
    """One engine-load poll and one model list, each within PROBE_TIMEOUT_S; never raises."""
    out: dict[str, Any] = {}
    engine = rt.table.engines.get(name)
    if engine is not None:
        out["engine_load"] = {"ok": await engine.poll_once(), **engine.status()}
    adapter = rt.adapters.get(name)
    if isinstance(adapter, ModelLister):
        started = time.perf_counter()
        try:
            models = await asyncio.wait_for(adapter.list_models(timeout=PROBE_TIMEOUT_S), PROBE_TIMEOUT_S)
        except (LabgateError, TimeoutError) as exc:
            error = exc.message if isinstance(exc, LabgateError) else f"no answer within {PROBE_TIMEOUT_S:g} s"
            out["models"] = {"ok": False, "error": error}
        else:
            out["models"] = {"ok": True, "count": len(models)}
        out["models"]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return out

