"""The OpenAI-compatible surface: request checks, then the gateway, then the wire format."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from labgate.auth import presented_key
from labgate.config.checks import CAPABILITY_PREFIX
from labgate.errors import InternalError, InvalidJSONError, LabgateError, RequestError
from labgate.gateway import Gateway
from labgate.providers.base import Reply
from labgate.record import RequestRecord, open_record
from labgate.server.envelopes import JSON, header_value, openai_error, openai_sse_error
from labgate.server.fields import MAX_MODEL_CHARS, is_int, is_number, model_problem
from labgate.server.http import Request, Response
from labgate.server.ids import client_request_id, ready, request_id
from labgate.server.sse import ErrorEventStream

log = logging.getLogger("labgate.server")
SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
               ("x-accel-buffering", "no")]
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


# param → (check, what it must be). Only keys present in a body are looked at.
_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "max_tokens": (lambda v: is_int(v) and v >= 1, "an integer ≥ 1"),  # type: ignore[operator]
    "max_completion_tokens": (lambda v: is_int(v) and v >= 1, "an integer ≥ 1"),  # type: ignore[operator]
    "n": (lambda v: is_int(v) and v >= 1, "an integer ≥ 1"),  # type: ignore[operator]
    "temperature": (lambda v: is_number(v) and 0 <= v <= 2, "a number between 0 and 2"),  # type: ignore[operator]
    "top_p": (lambda v: is_number(v) and 0 <= v <= 1, "a number between 0 and 1"),  # type: ignore[operator]
    "presence_penalty": (is_number, "a number"),
    "frequency_penalty": (is_number, "a number"),
    "seed": (is_int, "an integer"),
    "stop": (lambda v: v is None or isinstance(v, str)
             or (isinstance(v, list) and all(isinstance(s, str) for s in v)), "a string or array of strings"),
    "tools": (lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v), "an array of objects"),
    "tool_choice": (lambda v: isinstance(v, (str, dict)), "a string or an object"),
    "response_format": (lambda v: isinstance(v, dict) and isinstance(v.get("type"), str),
                        "an object with a 'type'"),
    "stream_options": (lambda v: v is None or isinstance(v, dict), "an object"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "dimensions": (lambda v: is_int(v) and v >= 1, "an integer ≥ 1"),  # type: ignore[operator]
    "encoding_format": (lambda v: v in ("float", "base64"), "'float' or 'base64'"),
}


def _object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSONError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidJSONError("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required and must be a non-empty string.", param="model")
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():  # what model_problem explains
        raise RequestError(f"'model' {model_problem(model)}.", param="model")
    for key in payload:  # in body order, so the reported param is stable
        if key not in _TYPES:
            continue
        check, what = _TYPES[key]
        if payload[key] is not None and not check(payload[key]):  # OpenAI accepts null for these
            # decode before cutting: 60 bytes may end inside a multi-byte character
            raise RequestError(f"'{key}' must be {what}; got {orjson.dumps(payload[key]).decode()[:60]}.",
                               param=key)
    return payload


def parse_chat(body: bytes) -> dict[str, Any]:
    payload = _object(body)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' is required and must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        if message.get("role") not in _ROLES:
            raise RequestError(f"'messages[{i}].role' must be one of {', '.join(sorted(_ROLES))}.",
                               param=f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise RequestError(f"'messages[{i}].content' must be a string or an array of parts.",
                               param=f"messages[{i}].content")
    return payload


def parse_completion(body: bytes) -> dict[str, Any]:
    payload = _object(body)
    prompt = payload.get("prompt")
    if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
        raise RequestError("'prompt' is required: a string or a non-empty array.", param="prompt")
    return payload


def parse_embedding(body: bytes) -> dict[str, Any]:
    payload = _object(body)
    given = payload.get("input")
    if not isinstance(given, (str, list)) or (isinstance(given, list) and not given):
        raise RequestError("'input' is required: a string or a non-empty array.", param="input")
    if payload.get("stream"):
        raise RequestError("Embeddings cannot be streamed.", param="stream")
    return payload


def route_headers(record: RequestRecord) -> list[tuple[str, str]]:
    """``x-request-id`` first, then what happened; names pass :func:`header_value` (they may hold anything)."""
    headers = [("x-request-id", record.request_id), ("x-labgate-attempts", str(record.attempts))]
    provider = record.provider
    if provider is not None:  # printable ASCII (the common case) goes as it is, without a call
        deployment = record.deployment or ""
        headers.append(("x-labgate-provider", provider if provider.isascii() and provider.isprintable()
                        else header_value(provider)))
        headers.append(("x-labgate-deployment", deployment if deployment.isascii() and deployment.isprintable()
                        else header_value(deployment)))
    if record.cache_status is not None:  # a cache is configured (docs/cache.md)
        headers.extend(cache_headers(record))
    if record.spill is not None:  # routed past a loaded local deployment (prefer_local_under)
        headers.append(("x-labgate-spill", header_value(record.spill)))
    cost = record.cost
    if cost is not None and record.finished is not None:  # whole replies (docs/cost.md)
        headers.append(("x-labgate-cost", f"{cost:.10f}".rstrip("0").rstrip(".") or "0" if cost else "0"))
    if record.routing is not None:  # a local_first route (docs/limits.md)
        headers.append(("x-labgate-routing", record.routing))
    if record.variant is not None:  # an A/B experiment took it (docs/experiments.md)
        headers.append(("x-labgate-experiment", f"{record.experiment}/{record.variant}"))
    if record.budget_fallback is not None:  # a budget sent it to budgets.fallback_model (docs/limits.md)
        headers.append(("x-labgate-budget", header_value("fallback:" + record.budget_fallback)))
    return headers


def cache_headers(record: RequestRecord) -> list[tuple[str, str]]:
    """``x-labgate-cache`` (hit | miss | bypass | off; an unavailable backend shows as off) and ``age`` on hits."""
    status = record.cache_status
    if status == "hit":
        return [("x-labgate-cache", "hit"), ("age", str(record.cache_age or 0))]
    return [("x-labgate-cache", "off" if status == "unavailable" else status or "off")]


def new_record(request: Request, endpoint: str, gateway: Gateway) -> RequestRecord:
    """The record of an API request: labgate's own id, the client's ``x-request-id`` beside it.

    Headers only a feature reads are read when it is configured (``gateway.runtime`` is the runtime
    ``Gateway.handle`` takes next: no await between them).
    """
    headers = request.headers
    rid = ready.pop() if ready else request_id()  # request_id(), without its frame while ids are ready
    record = open_record(rid, endpoint, request.client,
                         client_request_id(headers) if "x-request-id" in headers else None)
    rt = gateway.runtime
    if rt.cache is not None:
        record.cache_control = headers.get("cache-control")  # the response cache's controls
    if rt.queue is not None:
        record.priority = headers.get("x-labgate-priority")  # read by routing/queue.py
    if gateway.traces is not None:
        record.traceparent, record.tracestate = headers.get("traceparent"), headers.get("tracestate")
    if rt.experiments is not None:
        record.headers = headers  # the unit of assignment, tags and opt-out (routing/experiments.py)
    return record


class OpenAISurface:
    """Handlers for ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    # Handlers that return _serve's coroutine rather than await it: one coroutine layer less per request.
    def chat(self, request: Request) -> Coroutine[Any, Any, Response]:
        return self._serve(request, "chat", parse_chat)

    def completions(self, request: Request) -> Coroutine[Any, Any, Response]:
        return self._serve(request, "completions", parse_completion)

    def embeddings(self, request: Request) -> Coroutine[Any, Any, Response]:
        return self._serve(request, "embeddings", parse_embedding)

    async def _serve(self, request: Request, endpoint: str,
                     parse: Callable[[bytes], dict[str, Any]]) -> Response:
        record = new_record(request, endpoint, self.gateway)
        try:
            result = await self.gateway.handle(record, api_key=presented_key(request.headers),
                                               body=request.body, parse=parse)
        except LabgateError as exc:
            return openai_error(exc, record.request_id, route_headers(record)[1:])
        except Exception:
            log.exception("unexpected error serving %s (request %s)", endpoint, record.request_id)
            return openai_error(InternalError("The gateway hit an internal error; it has been logged."),
                                record.request_id)
        headers = route_headers(record)
        if isinstance(result, Reply):
            headers.append(JSON)
            return Response(200, headers, result.body)
        headers.extend(SSE_HEADERS)
        return Response(200, headers, stream=ErrorEventStream(result, openai_sse_error, record.request_id))

    async def models(self, request: Request) -> Response:
        rt = self.gateway.runtime
        record = new_record(request, "models", self.gateway)
        try:
            rt.auth.admit(presented_key(request.headers))
        except LabgateError as exc:
            return openai_error(exc, record.request_id)
        prefix = "/v1/models/"
        if request.path.startswith(prefix):
            name = request.path[len(prefix):]
            entry = next((m for m in model_list(self.gateway) if m["id"] == name), None)
            if entry is None:
                try:
                    rt.table.resolve(name)
                except LabgateError as exc:
                    return openai_error(exc, record.request_id)
                entry = {"id": name, "object": "model", "created": 0, "owned_by": "labgate"}
            return Response(200, [JSON, ("x-request-id", record.request_id)], orjson.dumps(entry))
        body = orjson.dumps({"object": "list", "data": model_list(self.gateway)})
        return Response(200, [JSON, ("x-request-id", record.request_id)], body)


def model_list(gateway: Gateway) -> list[dict[str, Any]]:
    """Every routable name with its provider, tags and capabilities as extra fields."""
    rt = gateway.runtime
    out = []
    created = int(time.time())
    for name, route in rt.table.routes.items():
        if name.startswith(CAPABILITY_PREFIX):
            continue  # routable, but not a model a UI should offer
        first = route.groups[0].deployments[0]
        info = first.info
        out.append({
            "id": name, "object": "model", "created": created, "owned_by": first.provider,
            "provider": first.provider,
            "deployments": [d.key for d in route.groups[0].deployments],
            "fallbacks": [d.key for g in route.groups[1:] for d in g.deployments],
            "tags": list(info.tags) if info else [],
            "capabilities": list(info.capabilities) if info else [],
            "context_length": info.context_length if info else None,
        })
    return out
