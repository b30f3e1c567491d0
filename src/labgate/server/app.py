"""The HTTP surface: every route labgate serves, in one table."""

from __future__ import annotations

from labgate.config.reload import Reloader
from labgate.errors import LabgateError, MethodNotAllowedError, RouteNotFoundError
from labgate.gateway import Gateway
from labgate.server.admin_cache import cache_routes
from labgate.server.admin_config import config_routes
from labgate.server.admin_history import history_routes
from labgate.server.anthropic import AnthropicSurface
from labgate.server.envelopes import anthropic_error, openai_error
from labgate.server.health import HealthSurface
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id
from labgate.server.metrics import metrics_routes
from labgate.server.openai import OpenAISurface


def build_app(gateway: Gateway, *, reloader: Reloader | None = None) -> Handler:
    """The request handler for the server: route lookup, then the surface's handler."""
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
    # /metrics, unless metrics.enabled is false (server/metrics.py)
    routes.update(metrics_routes(gateway))

    async def app(request: Request) -> Response:
        methods = routes.get(request.path)
        if methods is None:
            methods = next((m for p, m in prefixes.items() if request.path.startswith(p)), None)
        if methods is None:
            return not_found(request, RouteNotFoundError(f"No route for {request.method} {request.path}."))
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")  # the server sends the head without the body
        if handler is None:
            exc = MethodNotAllowedError(f"{request.method} is not allowed on {request.path}; "
                                        f"use {', '.join(methods)}.")
            return not_found(request, exc, [("allow", ", ".join(methods))])
        return await handler(request)

    return app


def not_found(request: Request, exc: LabgateError,
              headers: list[tuple[str, str]] | None = None) -> Response:
    # Anthropic-API clients get their own envelope, even for a wrong path or method
    render = anthropic_error if request.path.startswith("/v1/messages") else openai_error
    return render(exc, request_id(request.headers), headers)
