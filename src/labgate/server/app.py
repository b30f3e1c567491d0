"""The HTTP surface: every route labgate serves, in one table."""

from __future__ import annotations

import time
from collections.abc import Mapping

from labgate.config.reload import Reloader
from labgate.errors import LabgateError, MethodNotAllowedError, RouteNotFoundError
from labgate.gateway import Gateway
from labgate.runtime import Runtime
from labgate.server.admin_backups import backup_routes
from labgate.server.admin_budgets import budget_routes
from labgate.server.admin_cache import cache_routes
from labgate.server.admin_capacity import capacity_routes
from labgate.server.admin_config import config_routes
from labgate.server.admin_experiments import experiment_routes
from labgate.server.admin_history import history_routes
from labgate.server.admin_keys import key_routes
from labgate.server.anthropic import AnthropicSurface
from labgate.server.envelopes import anthropic_error, openai_error
from labgate.server.feedback import feedback_routes
from labgate.server.health import HealthSurface
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import client_request_id, request_id
from labgate.server.metrics import metrics_routes
from labgate.server.openai import OpenAISurface
from labgate.server.origin import Edge
from labgate.server.ui import ui_routes


def build_app(gateway: Gateway, *, reloader: Reloader | None = None, listen_host: str | None = None) -> Handler:
    """The request handler for the server: the Host/Origin check, route lookup, then the surface's handler.

    ``listen_host`` (the address the server listens on) is a name the gateway answers for.
    """
    openai = OpenAISurface(gateway)
    anthropic = AnthropicSurface(gateway)
    health = HealthSurface(gateway)
    routes: dict[str, dict[str, Handler]] = {
        "/v1/chat/completions": {"POST": openai.chat},
        "/v1/completions": {"POST": openai.completions},
        "/v1/embeddings": {"POST": openai.embeddings},
        "/v1/models": {"GET": openai.models},
        "/v1/messages": {"POST": anthropic.messages},
        "/v1/messages/count_tokens": {"POST": anthropic.count_tokens},
        "/health": {"GET": health.health},
        "/health/liveness": {"GET": health.liveness},
        "/health/readiness": {"GET": health.readiness},
        "/health/providers": {"GET": health.providers},
    }
    # clients configured with a base URL lacking /v1 still work
    for path in ("/chat/completions", "/completions", "/embeddings", "/models"):
        routes[path] = routes["/v1" + path]
    prefixes = {"/v1/models/": routes["/v1/models"]}
    # /admin/history, /admin/analytics/* (server/admin_history.py)
    history, history_prefixes = history_routes(gateway)
    routes.update(history)
    prefixes.update(history_prefixes)
    # /admin/config, /admin/config/validate, /admin/config/reload (server/admin_config.py)
    routes.update(config_routes(gateway, reloader))
    # /admin/cache/stats, /admin/cache/keys, /admin/cache/flush (server/admin_cache.py)
    routes.update(cache_routes(gateway))
    # /admin/capacity, /admin/capacity/probe, /admin/capacity/regions/{region} (server/admin_capacity.py)
    capacity, capacity_prefixes = capacity_routes(gateway)
    routes.update(capacity)
    prefixes.update(capacity_prefixes)
    # /admin/budgets (server/admin_budgets.py)
    routes.update(budget_routes(gateway))
    # /admin/config/backups, …/{name}/restore (server/admin_backups.py)
    backups, backup_prefixes = backup_routes(gateway, reloader)
    routes.update(backups)
    prefixes.update(backup_prefixes)
    # POST /v1/feedback, /admin/analytics/feedback (server/feedback.py)
    routes.update(feedback_routes(gateway))
    # /admin/experiments, /admin/experiments/{name}[/analysis|/export|/start|/pause|/stop] (admin_experiments.py)
    experiments, experiment_prefixes = experiment_routes(gateway, reloader)
    routes.update(experiments)
    prefixes.update(experiment_prefixes)
    # /ui/: the Lab UI's static files (server/ui.py)
    ui, ui_prefixes = ui_routes()
    routes.update(ui)
    prefixes.update(ui_prefixes)
    # /admin/keys, /admin/keys/{id}[/revoke|/rotate], /admin/audit (server/admin_keys.py)
    keys, key_prefixes = key_routes(gateway)
    routes.update(keys)
    prefixes.update(key_prefixes)
    # /metrics, unless metrics.enabled is false (server/metrics.py)
    routes.update(metrics_routes(gateway))

    edges: dict[Runtime, Edge] = {}  # the current runtime's, rebuilt after a reload

    def edge_of(rt: Runtime) -> Edge:
        edges.clear()
        edge = edges[rt] = Edge.from_config(rt.config.gateway, listen_host=listen_host,
                                            auth_enabled=rt.auth.enabled)
        return edge

    async def app(request: Request) -> Response:
        headers = request.headers
        # Host allow-list and Origin check (server/origin.py): before anything is routed. With any
        # host allowed and no Origin header (SDKs, curl) there is nothing to check.
        rt = gateway.runtime
        edge = edges.get(rt) or edge_of(rt)
        origin = headers.get("origin")
        if origin is not None or edge.checks_host:
            refusal = edge.refusal(request)
            if refusal is not None:
                return echo_client_id(headers, refused(rt, request, refusal))
        if origin is not None and edge.is_preflight(request):
            response = Response(204, [("x-request-id", request_id()), *edge.preflight_headers(request)])
        else:
            methods = routes.get(request.path)  # the common case inline; route() for the rest
            handler = None if methods is None else methods.get(request.method)
            found = handler if handler is not None else route(request)
            if isinstance(found, tuple):
                response = refused(rt, request, *found)
            else:
                response = await found(request)
            if origin is not None:
                response.headers.extend(edge.cors_headers(origin))
        if "x-request-id" in headers:
            echo_client_id(headers, response)
        return response

    def refused(rt: Runtime, request: Request, exc: LabgateError,
                headers: list[tuple[str, str]] | None = None) -> Response:
        """The error answer for a request no surface takes, counted (metrics) and logged (access log):
        what reached labgate is recorded even when it is refused at the edge."""
        response = envelope(request, exc, headers)
        metrics = gateway.metrics
        if metrics is not None:
            code = exc.code or exc.openai_type
            metrics.refused[code] = metrics.refused.get(code, 0) + 1
        rt.access_log.write_refusal({
            "request_id": next((v for k, v in response.headers if k == "x-request-id"), None),
            "client_request_id": client_request_id(request.headers), "ts": round(time.time(), 3),
            "method": request.method, "path": request.path[:256], "status": response.status,
            "outcome": "refused", "error_type": exc.code or exc.openai_type, "client_ip": request.client,
            "host": request.headers.get("host", "")[:256] or None,
            "origin": request.headers.get("origin", "")[:256] or None,
        })
        return response

    def route(request: Request) -> Handler | tuple[LabgateError, list[tuple[str, str]] | None]:
        """The handler for ``request``'s path and method, or the error to answer when there is none."""
        methods = routes.get(request.path)
        if methods is None:
            methods = next((m for p, m in prefixes.items() if request.path.startswith(p)), None)
        if methods is None:
            return RouteNotFoundError(f"No route for {request.method} {request.path}."), None
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")  # the server sends the head without the body
        if handler is None:
            exc = MethodNotAllowedError(f"{request.method} is not allowed on {request.path}; "
                                        f"use {', '.join(methods)}.")
            return exc, [("allow", ", ".join(methods))]
        return handler

    return app


def envelope(request: Request, exc: LabgateError, headers: list[tuple[str, str]] | None = None) -> Response:
    """An error answer before any surface: Anthropic-API clients get their own envelope, even for a wrong path."""
    render = anthropic_error if request.path.startswith("/v1/messages") else openai_error
    return render(exc, request_id(), headers)


def echo_client_id(headers: Mapping[str, str], response: Response) -> Response:
    """Every answer names the client's own ``x-request-id`` (when sane) as ``x-client-request-id``.

    (The hot path calls this only when the request has an ``x-request-id``.)"""
    given = client_request_id(headers)
    if given is not None:
        response.headers.append(("x-client-request-id", given))
    return response
