"""Errors in Anthropic's envelope: type names, statuses (overloaded_error is 529) and the shared headers."""

from __future__ import annotations

import orjson
import pytest

from labgate.errors import (
    AllAttemptsFailedError,
    AttemptFailure,
    AuthenticationError,
    BodyTooLargeError,
    InternalError,
    LabgateError,
    ModelNotFoundError,
    NoHealthyDeploymentError,
    RequestError,
    UnsupportedEndpointError,
    UpstreamConnectionError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from labgate.server.envelopes import anthropic_error, anthropic_sse_error, openai_error

JSON = ("content-type", "application/json")


def failed(*errors: LabgateError) -> AllAttemptsFailedError:
    return AllAttemptsFailedError([AttemptFailure(f"p{i}/m", e) for i, e in enumerate(errors)])


def overloaded(status: int = 529) -> UpstreamStatusError:
    return UpstreamStatusError("busy", upstream_status=status)


@pytest.mark.parametrize(("exc", "status", "kind"), [
    (RequestError("messages: Field required"), 400, "invalid_request_error"),
    (BodyTooLargeError("too big"), 413, "request_too_large"),
    (AuthenticationError("no key"), 401, "authentication_error"),
    (ModelNotFoundError("nope", ["nope-2"]), 404, "not_found_error"),
    (UnsupportedEndpointError("no"), 400, "invalid_request_error"),
    (UpstreamRejectedError("huge", status=413), 413, "request_too_large"),
    (UpstreamTimeoutError("slow"), 504, "timeout_error"),
    (UpstreamConnectionError("gone"), 502, "api_error"),
    (UpstreamRateLimitError("slow down", retry_after=2.5), 429, "rate_limit_error"),
    (overloaded(529), 529, "overloaded_error"),
    (overloaded(503), 529, "overloaded_error"),
    (UpstreamStatusError("boom", upstream_status=500), 502, "api_error"),
    (NoHealthyDeploymentError("all cooling", retry_after=3), 529, "overloaded_error"),
    (failed(overloaded(529), overloaded(503)), 529, "overloaded_error"),
    (failed(UnsupportedEndpointError("skipped"), overloaded(529)), 529, "overloaded_error"),
    (failed(overloaded(529), UpstreamConnectionError("gone")), 502, "api_error"),
    (failed(UpstreamTimeoutError("slow"), UpstreamTimeoutError("slower")), 504, "timeout_error"),
    (InternalError("oops"), 500, "api_error"),
])
def test_anthropic_type_and_status(exc: LabgateError, status: int, kind: str) -> None:
    response = anthropic_error(exc, "req_1")
    assert response.status == status
    assert orjson.loads(response.body) == {"type": "error", "error": {"type": kind, "message": exc.message},
                                           "request_id": "req_1"}


def test_overloaded_keeps_its_openai_status() -> None:
    exc = failed(overloaded(529))
    assert (openai_error(exc, "r").status, anthropic_error(exc, "r").status) == (502, 529)
    assert (openai_error(NoHealthyDeploymentError("x"), "r").status,
            anthropic_error(NoHealthyDeploymentError("x"), "r").status) == (503, 529)


def test_headers_are_shared_with_the_openai_envelope_plus_request_id() -> None:
    assert anthropic_error(ModelNotFoundError("m"), "req_1", [("x-labgate-attempts", "0")]).headers == [
        JSON, ("x-request-id", "req_1"), ("x-should-retry", "false"), ("request-id", "req_1"),
        ("x-labgate-attempts", "0")]
    assert anthropic_error(UpstreamRateLimitError("slow", retry_after=2.5), "req_2").headers == [
        JSON, ("x-request-id", "req_2"), ("retry-after", "3"), ("request-id", "req_2")]
    assert anthropic_error(InternalError("x"), None).headers == [JSON]


def test_the_sse_error_event() -> None:
    assert anthropic_sse_error(overloaded(), "req_1") == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"},'
        b'"request_id":"req_1"}\n\n')
