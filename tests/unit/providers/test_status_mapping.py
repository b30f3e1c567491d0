"""How an upstream's non-2xx answer maps onto our errors (and so: fall back or not)."""

from __future__ import annotations

import pytest

from labgate.errors import (
    UpstreamDeploymentError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from labgate.providers.http import error_for_status

OPENAI_BODY = b'{"error": {"message": "model \'x\' not found", "type": "invalid_request_error", "param": "model"}}'


@pytest.mark.parametrize(("status", "kind", "retryable", "client_status"), [
    (400, UpstreamRejectedError, False, 400),   # the request itself is bad: the same everywhere
    (422, UpstreamRejectedError, False, 422),
    (401, UpstreamDeploymentError, True, 502),  # this deployment's credentials: try another
    (403, UpstreamDeploymentError, True, 502),
    (404, UpstreamDeploymentError, True, 502),  # model not pulled on this engine
    (408, UpstreamTimeoutError, True, 504),
    (429, UpstreamRateLimitError, True, 429),
    (500, UpstreamStatusError, True, 502),
    (529, UpstreamStatusError, True, 502),
])
def test_status_classes(status: int, kind: type, retryable: bool, client_status: int) -> None:
    error = error_for_status(status, OPENAI_BODY, {}, "provider 'p'")
    assert type(error) is kind
    assert (error.retryable, error.status) == (retryable, client_status)
    assert error.message == f"provider 'p' answered {status}: model 'x' not found"


def test_rejection_keeps_param_and_retry_after_is_read() -> None:
    rejected = error_for_status(400, OPENAI_BODY, {}, "provider 'p'")
    assert rejected.param == "model"
    limited = error_for_status(429, b"slow down", {"retry-after": "7"}, "provider 'p'")
    assert isinstance(limited, UpstreamRateLimitError)
    assert (limited.retry_after, limited.message) == (7.0, "provider 'p' answered 429: slow down")


def test_anthropic_error_body() -> None:
    body = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    error = error_for_status(529, body, {}, "provider 'claude'")
    assert isinstance(error, UpstreamStatusError)
    assert error.message == "provider 'claude' answered 529: Overloaded"
