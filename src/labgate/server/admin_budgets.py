"""``GET /admin/budgets``: every budget's limit, period, window and what it has used (the Lab UI's Access page).

Admission is the admin rule (the master key; loopback only when none is set); a virtual key is never an admin.

    GET /admin/budgets   ?scope= (global | project | model | provider | key: only those)
        → {"backend": "memory" | "sqlite" | "redis" | null, "data": [{budget, scope, name, limit_usd, period,
           window, resets_in_s, used_usd, remaining_usd}, …], "error": null | "…"}

``used_usd`` is the current window's counter: settled spend plus the estimates of requests still in flight
(one number, as the limiter keeps it: docs/limits.md). Configured budgets come from ``budgets.limits``; a
virtual key's from its ``budget_usd``. While the counters' backend cannot be read, the budgets are listed
with ``used_usd: null`` and ``error`` says why.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qs

import orjson

from labgate.auth import admit_admin
from labgate.errors import LabgateError, RequestError
from labgate.gateway import Gateway
from labgate.server.envelopes import JSON, openai_error
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id

log = logging.getLogger("labgate.server")
BUDGETS = "/admin/budgets"
SCOPES = ("global", "project", "model", "provider", "key")
PARAMS = ("scope",)


def budget_routes(gateway: Gateway) -> dict[str, dict[str, Handler]]:
    """The routes for ``server/app.py``'s table."""
    return {BUDGETS: {"GET": lambda request: list_budgets(gateway, request)}}


async def list_budgets(gateway: Gateway, request: Request) -> Response:
    rid = request_id(request.headers)
    try:
        runtime = gateway.runtime
        admit_admin(runtime.auth, request.headers, request.client)
        scope = _scope(request.query)
        body: dict[str, Any] = {"backend": None, "data": [], "error": None}
        limiter = runtime.limiter
        if limiter is not None:
            body["backend"] = getattr(limiter.counters, "backend", None)
            ring = runtime.auth.keyring
            keys = list(ring.by_hash.values()) if ring is not None else []
            rows, body["error"] = await limiter.usage(keys, time.time())
            body["data"] = [r for r in rows if scope is None or r["scope"] == scope]
    except LabgateError as exc:
        return openai_error(exc, rid)
    return Response(200, [JSON, ("x-request-id", rid), ("cache-control", "no-store")], orjson.dumps(body))



def _scope(query: str) -> str | None:
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=len(PARAMS) + 1)
    except ValueError:
        raise RequestError("The query string is malformed: use ?scope=global|project|model|provider|key.") from None
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise RequestError(f"Unknown query parameter {unknown[0][:40]!r}: only 'scope' is accepted.",
                           param=unknown[0][:40])
    given = params.get("scope")
    if given is None:
        return None
    if len(given) != 1 or given[0] not in SCOPES:
        raise RequestError(f"'scope' must be one of {', '.join(SCOPES)}.", param="scope")
    return given[0]
