"""Errors rendered in the client's dialect, with the headers SDKs act on."""

from __future__ import annotations

import math
from urllib.parse import quote

import orjson

from labgate.errors import LabgateError
from labgate.server.http import Response

JSON = ("content-type", "application/json")
# What a header value may hold as it is: printable ASCII. Anything else is percent-encoded (UTF-8).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(value: str) -> str:
    """``value`` made safe for a response header: as it is when printable ASCII, else percent-encoded.

    Names that reach headers (provider, deployment: ``provider/<anything the client sent>``) may hold
    CR/LF, other control characters or non-Latin-1 text; written raw, those would split the head or fail
    to encode (and the client would get a 500 while the record said otherwise). Encoded (``%0D%0A``,
    ``%E6%A8%A1``, ``%25`` for a ``%`` among them), every value goes out, readable and unambiguous.
    """
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=_HEADER_SAFE, errors="backslashreplace")  # even a lone surrogate


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
    return Response(exc.status_in("anthropic"), headers, anthropic_error_body(exc, request_id))


def anthropic_sse_error(exc: LabgateError, request_id: str | None) -> bytes:
    """The ``error`` event that ends an Anthropic stream which failed after it started."""
    return b"event: error\ndata: " + anthropic_error_body(exc, request_id) + b"\n\n"
