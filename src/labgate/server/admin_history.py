"""``/admin/history`` and ``/admin/analytics/*``: request history and analytics as JSON.

Every route needs the master key (when one is configured: with no key the
whole gateway is open, and says so at start-up). Query parameters:

    filters     model, provider, status (200 | 5xx | ok | error | stream_error | client_disconnected),
                text, since, until (ISO 8601, Unix seconds or an age: 2h, 7d), key, endpoint,
                client_request_id (the client's x-request-id), trace_id (32 hex digits)
    /admin/history                 + limit (≤ 1000, default 50), offset     newest first
    /admin/history/{id}            one whole record (labgate's x-request-id, or the row id), with its feedback
    /admin/history/export          + format=jsonl|json|csv                  oldest first, streamed
    /admin/history/status          the writer: queued, written, dropped, last error
    /admin/history/metrics         the same counters in the Prometheus text format
    /admin/analytics/volume        + bucket (minute|hour|day|week|seconds), by (model|provider|key|…)
    /admin/analytics/latency       + bucket (optional), by
    /admin/analytics/tokens        + by
    /admin/analytics/errors        + by (default provider); also the count of each error type
    /admin/analytics/prompts       + limit (default 20)
    /admin/analytics/cache         + by (optional)
    /admin/analytics/summary
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from labgate.auth import admit_admin
from labgate.errors import HistoryUnavailableError, LabgateError, RecordNotFoundError, RequestError
from labgate.gateway import Gateway
from labgate.server.envelopes import JSON, openai_error
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id
from labgate.store import analytics, query
from labgate.store.base import Store
from labgate.store.export import CONTENT_TYPES, export
from labgate.telemetry.metrics import CONTENT_TYPE

log = logging.getLogger("labgate.server")
HISTORY = "/admin/history"
ANALYTICS = "/admin/analytics/"
_MAX_LIMIT = 1000

Params = dict[str, str]


def history_routes(gateway: Gateway) -> tuple[dict[str, dict[str, Handler]], dict[str, dict[str, Handler]]]:
    """``(exact routes, prefix routes)`` for ``server/app.py``'s table."""
    surface = HistorySurface(gateway)
    routes: dict[str, dict[str, Handler]] = {
        HISTORY: {"GET": surface.search},
        HISTORY + "/status": {"GET": surface.status},
        HISTORY + "/metrics": {"GET": surface.metrics},
        HISTORY + "/export": {"GET": surface.export},
    }
    for name in surface.analytics:
        routes[ANALYTICS + name] = {"GET": surface.analytics_route(name)}
    return routes, {HISTORY + "/": {"GET": surface.show}}


def _json(data: Any, rid: str, status: int = 200) -> Response:
    return Response(status, [JSON, ("x-request-id", rid), ("cache-control", "no-store")],
                    orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS))


class HistorySurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.analytics: dict[str, Callable[[Store, query.Filter, Params], Awaitable[Any]]] = {
            "volume": lambda s, f, p: analytics.volume(s, f, bucket=p.get("bucket", "hour"),
                                                       by=_by(p, "model")),
            "latency": lambda s, f, p: analytics.latency(s, f, bucket=p.get("bucket"), by=_by(p, "model")),
            "tokens": lambda s, f, p: analytics.tokens(s, f, by=_by(p, "model")),
            "errors": lambda s, f, p: analytics.errors(s, f, by=_by(p, "provider")),
            "prompts": lambda s, f, p: analytics.prompts(s, f, limit=_int(p, "limit", 20, 1, _MAX_LIMIT)),
            "cache": lambda s, f, p: analytics.cache(s, f, by=_by(p, None)),
            "summary": lambda s, f, p: analytics.summary(s, f),
        }

    async def search(self, request: Request) -> Response:
        async def run(store: Store, params: Params) -> Any:
            limit = _int(params, "limit", 50, 1, _MAX_LIMIT)
            offset = _int(params, "offset", 0, 0, None)
            rows = await query.search(store, _filter(params), limit=limit + 1, offset=offset)
            return {"data": rows[:limit], "limit": limit, "offset": offset, "has_more": len(rows) > limit}
        return await self._serve(request, run)

    async def show(self, request: Request) -> Response:
        ident = request.path[len(HISTORY) + 1:]

        async def run(store: Store, params: Params) -> Any:
            found = await query.get(store, ident)
            if found is None:
                raise RecordNotFoundError(f"No history record with id {ident!r}.")
            found["feedback"] = await query.feedback(store, found["request_id"])  # POST /v1/feedback
            return found
        return await self._serve(request, run)

    async def status(self, request: Request) -> Response:
        async def run(store: Store, params: Params) -> Any:
            assert self.gateway.history is not None
            return self.gateway.history.stats()
        return await self._serve(request, run)

    async def metrics(self, request: Request) -> Response:
        """``labgate_history_dropped_total`` and friends, for Prometheus (``/metrics`` serves them too)."""
        rid = request_id(request.headers)
        try:
            self._open(request)
        except LabgateError as exc:
            return openai_error(exc, rid)
        assert self.gateway.history is not None
        return Response(200, [("content-type", CONTENT_TYPE), ("x-request-id", rid)],
                        self.gateway.history.prometheus().encode())

    def analytics_route(self, name: str) -> Handler:
        compute = self.analytics[name]

        async def handler(request: Request) -> Response:
            return await self._serve(request, lambda store, params: compute(store, _filter(params), params))
        return handler

    async def export(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            store, params = self._open(request)
            fmt = params.get("format", "jsonl")
            if fmt not in CONTENT_TYPES:
                raise RequestError(f"format must be one of {', '.join(CONTENT_TYPES)}; got {fmt!r}.", param="format")
            where = _filter(params)
        except LabgateError as exc:
            return openai_error(exc, rid)
        headers = [("content-type", CONTENT_TYPES[fmt]), ("x-request-id", rid),
                   ("content-disposition", f'attachment; filename="history.{fmt}"')]
        return Response(200, headers, stream=_logged(export(store, where, fmt), rid))

    async def _serve(self, request: Request, run: Callable[[Store, Params], Awaitable[Any]]) -> Response:
        rid = request_id(request.headers)
        try:
            store, params = self._open(request)
            return _json(await run(store, params), rid)
        except LabgateError as exc:
            return openai_error(exc, rid)
        except ValueError as exc:
            return openai_error(RequestError(str(exc)), rid)
        except Exception:
            log.exception("history store failed to answer %s (request %s)", request.path, rid)
            return openai_error(HistoryUnavailableError("The history store failed to answer; it has been logged."),
                                rid)

    def _open(self, request: Request) -> tuple[Store, Params]:
        admit_admin(self.gateway.runtime.auth, request.headers, request.client)
        history = self.gateway.history
        if history is None:
            raise HistoryUnavailableError("Request history is off (store.capture: none).")
        return history.store, {k: v[-1] for k, v in parse_qs(request.query, keep_blank_values=False).items()}


def _filter(params: Params) -> query.Filter:
    since, until = (query.parse_time(params[name]) if name in params else None for name in ("since", "until"))
    return query.Filter(model=params.get("model"), provider=params.get("provider"), status=params.get("status"),
                        text=params.get("text"), key=params.get("key"), endpoint=params.get("endpoint"),
                        client_request_id=params.get("client_request_id"), trace_id=params.get("trace_id"),
                        since=since, until=until)


def _by(params: Params, default: str | None) -> str | None:
    given = params.get("by", default)
    return None if given in (None, "none", "") else given


def _int(params: Params, name: str, default: int, low: int, high: int | None) -> int:
    given = params.get(name)
    if given is None:
        return default
    if not given.isdigit() or int(given) < low or (high is not None and int(given) > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise RequestError(f"'{name}' must be an integer {bound}; got {given!r}.", param=name)
    return int(given)


async def _logged(stream: AsyncIterator[bytes], rid: str) -> AsyncIterator[bytes]:
    """An export that fails midway must not look complete: the error goes on to the server.

    The head (200) is already sent, so the server closes the connection without the
    terminating chunk, and the client's HTTP library reports an incomplete body. Swallowing
    the error here would let the server end the body properly, a truncated export that
    looks whole. The server logs the failure once, with this request id and the cause.
    """
    try:
        async for chunk in stream:
            yield chunk
    except Exception as exc:
        raise HistoryUnavailableError(f"history export failed midway (request {rid})") from exc
