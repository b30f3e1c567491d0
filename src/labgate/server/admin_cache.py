"""``/admin/cache/*``: the response cache for operators (``labgate cache`` talks to these).

Admission is the admin rule (the master key; loopback only when none is set).

    GET  /admin/cache/stats  ?scan_limit= (≤ 1000000, default 20000: keys read; past it: lower bounds)
                             entries and bytes per namespace, this process's hits, misses, hit rate, bytes
                             and saved tokens
    GET  /admin/cache/keys   ?namespace= &pattern= &limit= (≤ 10000, default 100)
    POST /admin/cache/flush  ?namespace=            (no namespace: every namespace) → {"deleted": n}
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from labgate.auth import admit_admin
from labgate.errors import CacheUnavailableError, LabgateError, RequestError
from labgate.gateway import Gateway
from labgate.server.admin_keys import audit_event
from labgate.server.envelopes import JSON, openai_error
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id
from labgate.state import inventory
from labgate.state.base import StateUnavailableError
from labgate.state.cache import Cache

log = logging.getLogger("labgate.server")
PREFIX = "/admin/cache"

Params = dict[str, str]


def cache_routes(gateway: Gateway) -> dict[str, dict[str, Handler]]:
    """The routes for ``server/app.py``'s table."""
    surface = CacheSurface(gateway)
    return {PREFIX + "/stats": {"GET": surface.stats}, PREFIX + "/keys": {"GET": surface.keys},
            PREFIX + "/flush": {"POST": surface.flush}}


class CacheSurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def stats(self, request: Request) -> Response:
        return await self._serve(request, lambda cache, p: _stats(cache, _limit(p, "scan_limit", inventory.SCAN_LIMIT,
                                                                                 inventory.MAX_SCAN_LIMIT)))

    async def keys(self, request: Request) -> Response:
        async def run(cache: Cache, params: Params) -> Any:
            found = await inventory.keys(cache.entries, namespace=params.get("namespace"),
                                         pattern=params.get("pattern"),
                                         limit=_limit(params, "limit", 100, inventory.MAX_LIST))
            return {"data": found}
        return await self._serve(request, run)

    async def flush(self, request: Request) -> Response:
        async def run(cache: Cache, params: Params) -> Any:
            namespace = params.get("namespace")
            deleted = await inventory.flush(cache.entries, namespace=namespace)
            log.warning("cache: flushed %d entries (%s) by admin request %s", deleted,
                        f"namespace {namespace}" if namespace else "every namespace", request_id(request.headers))
            await audit_event(self.gateway, request, "cache.flush", namespace, None, {"deleted": deleted})
            return {"deleted": deleted, "namespace": namespace}
        return await self._serve(request, run)

    async def _serve(self, request: Request, run: Callable[[Cache, Params], Awaitable[Any]]) -> Response:
        rid = request_id(request.headers)
        try:
            admit_admin(self.gateway.runtime.auth, request.headers, request.client)
            cache = self.gateway.runtime.cache
            if cache is None:
                raise CacheUnavailableError("The response cache is not configured (gateway.yaml: cache:).")
            params = {k: v[-1] for k, v in parse_qs(request.query).items()}
            data = await run(cache, params)
        except LabgateError as exc:
            return openai_error(exc, rid)
        except ValueError as exc:
            return openai_error(RequestError(str(exc)), rid)
        except StateUnavailableError as exc:
            return openai_error(CacheUnavailableError(f"The cache backend cannot be reached: {exc}"), rid)
        return Response(200, [JSON, ("x-request-id", rid), ("cache-control", "no-store")], orjson.dumps(data))


def _limit(params: Params, name: str, default: int, most: int) -> int:
    given = params.get(name)
    if given is None:
        return default
    if not given.isdigit() or not 1 <= int(given) <= most:
        raise RequestError(f"'{name}' must be an integer between 1 and {most}.", param=name)
    return int(given)


async def _stats(cache: Cache, limit: int) -> dict[str, Any]:
    data = await inventory.stats(cache.entries, cache.counts, limit=limit)
    config = cache.config
    data["config"] = {"namespace": config.namespace, "ttl_s": config.ttl_s, "endpoints": list(config.endpoints),
                      "nondeterministic": config.nondeterministic, "single_flight": config.single_flight}
    return data
