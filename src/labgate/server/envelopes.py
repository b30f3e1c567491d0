"""Errors rendered in the client's dialect, with the headers SDKs act on."""

from __future__ import annotations

import math

import orjson

from labgate.errors import LabgateError
from labgate.server.http import Response

JSON = ("content-type", "application/json")
OVERLOADED_STATUS = 529  # Anthropic's status for overloaded_error


def error_headers(exc: LabgateError, request_id: str | None) -> list[tuple[str, str]]:
    """The headers of every error answer, whatever its dialect."""
    headers = [JSON]
    if request_id:
        headers.append(("x-request-id", request_id))
    if not exc.should_retry:
        headers.append(("x-should-retry", "false"))
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is None and exc.status in (429, 503):
        retry_after = 1.0  # tell clients to back off even when the upstream did not say how long
    if retry_after is not None:
        headers.append(("retry-after", str(max(1, math.ceil(retry_after)))))
    return headers


def openai_error_body(exc: LabgateError, request_id: str | None) -> bytes:
    return orjson.dumps({
        "error": {"message": exc.message, "type": exc.openai_type, "param": exc.param, "code": exc.code},
        "request_id": request_id,
    })


def openai_error(exc: LabgateError, request_id: str | None,
                 extra_headers: list[tuple[str, str]] | None = None) -> Response:
    """``{"error": {"message", "type", "param", "code"}}`` with the error's status."""
    headers = error_headers(exc, request_id)
    if extra_headers:
        headers.extend(extra_headers)
    return Response(exc.status, headers, openai_error_body(exc, request_id))


def openai_sse_error(exc: LabgateError, request_id: str | None) -> bytes:
    """The one SSE event that ends a stream which failed after it started."""
    return b"data: " + openai_error_body(exc, request_id) + b"\n\n"


def anthropic_error_body(exc: LabgateError, request_id: str | None) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": exc.anthropic_type, "message": exc.message},
                         "request_id": request_id})


def anthropic_error(exc: LabgateError, request_id: str | None,
                    extra_headers: list[tuple[str, str]] | None = None) -> Response:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}``; overloaded_error is 529."""
    headers = error_headers(exc, request_id)
    if request_id:
        headers.append(("request-id", request_id))  # where the anthropic SDK reads it
    if extra_headers:
        headers.extend(extra_headers)
    status = OVERLOADED_STATUS if exc.anthropic_type == "overloaded_error" else exc.status
    return Response(status, headers, anthropic_error_body(exc, request_id))


def anthropic_sse_error(exc: LabgateError, request_id: str | None) -> bytes:
    """The ``error`` event that ends an Anthropic stream which failed after it started."""
    return b"event: error\ndata: " + anthropic_error_body(exc, request_id) + b"\n\n"
