"""The error hierarchy: every failure a client can see, as data.

Rendering is the server's job (``server/envelopes.py``); adapters translate
foreign exceptions into these classes at exactly one boundary
(``providers/http.py``). Status, OpenAI ``type``, Anthropic ``type``,
``code`` and ``retryable`` are class data.

    LabgateError                      500 api_error
    ├── RequestError                  400 invalid_request_error   (x-should-retry: false)
    │   ├── InvalidJSONError          400
    │   ├── BodyTooLargeError         413
    │   ├── HeaderTooLargeError       431
    │   ├── RequestTimeoutError       408 head and body not received within server.request_read_timeout_s
    │   ├── UnsupportedFramingError   501 a transfer coding we do not implement (505: an HTTP version)
    │   ├── RouteNotFoundError        404 (unknown path)
    │   ├── RecordNotFoundError       404 no history record with that id
    │   ├── MethodNotAllowedError     405
    │   ├── MisdirectedRequestError   421 the Host header names no host this gateway answers for
    │   ├── ConfigInvalidError        422 a reload refused: the new config does not validate
    │   └── ReloadUnavailableError    409 the config did not come from files; nothing to reload
    ├── AuthenticationError           401 (x-should-retry: false)
    ├── PermissionDeniedError         403 an admin call without the rights it needs; a browser
    │                                      request from an origin not in cors.allow_origins
    ├── ModelNotFoundError            404 "did you mean …" (x-should-retry: false)
    ├── UnsupportedEndpointError      400 the model's provider cannot serve this endpoint
    ├── UpstreamError                 502  — an attempt failed; the next candidate may succeed
    │   ├── UpstreamConnectionError   502  could not connect / connection dropped
    │   ├── UpstreamTimeoutError      504
    │   ├── UpstreamStatusError       502  upstream answered 5xx (503/529: Anthropic overloaded_error)
    │   ├── UpstreamRateLimitError    429  upstream answered 429
    │   ├── UpstreamBadResponseError  502  upstream body is not what the protocol says
    │   ├── UpstreamDeploymentError   502  upstream answered 401/403/404: this deployment cannot serve
    │   └── DeploymentBusyError       503  every slot / pooled connection of the deployment is busy:
    │                                      try the next candidate or queue; never a circuit failure
    ├── UpstreamRejectedError         4xx  upstream refused the request itself (not retried, no fallback)
    ├── NoHealthyDeploymentError      503  every candidate is cooling down (Anthropic overloaded_error)
    ├── OverCapacityError             429/503  every candidate is full and the queue refused or timed out,
    │                                      or the gateway is shutting down (retry-after always)
    ├── AllAttemptsFailedError        502/504/429 every candidate failed; holds each cause
    │                                      (Anthropic overloaded_error when every one was overloaded;
    │                                      code all_deployments_rejected, x-should-retry: false, when
    │                                      every upstream refused its deployment with 401/403/404)
    ├── HistoryUnavailableError       503  history is off, or its store cannot be read now
    ├── CacheUnavailableError         503  the response cache is off, or its backend cannot be reached now
    ├── ConnectionLimitError          503  server.max_connections(_per_ip) reached: the connection is refused
    └── InternalError                 500  an unexpected exception (logged once, never on the wire)

On ``/v1/messages`` an ``overloaded_error`` is answered with Anthropic's 529
(:meth:`LabgateError.status_in`): the one place that decides it, for the
envelope and for the record alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ANTHROPIC_OVERLOADED_STATUS = 529  # Anthropic's status for overloaded_error


class LabgateError(Exception):
    """Base of every error labgate reports to a client."""

    status: int = 500
    openai_type: str = "api_error"
    anthropic_type: str = "api_error"
    code: str | None = None
    retryable: bool = False  # may the client (or our attempt loop) try again?

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def should_retry(self) -> bool:
        """What ``x-should-retry`` tells the official SDKs."""
        return self.retryable

    def status_in(self, dialect: str) -> int:
        """The HTTP status a client of ``dialect`` (``openai`` | ``anthropic``) is answered with."""
        if dialect == "anthropic" and self.anthropic_type == "overloaded_error":
            return ANTHROPIC_OVERLOADED_STATUS
        return self.status


class RequestError(LabgateError):
    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSONError(RequestError):
    code = "invalid_json"


class BodyTooLargeError(RequestError):
    status = 413
    anthropic_type = "request_too_large"
    code = "request_too_large"


class HeaderTooLargeError(RequestError):
    status = 431
    code = "header_too_large"


class RequestTimeoutError(RequestError):
    """The client took longer than ``server.request_read_timeout_s`` to send a request's head and body."""

    status = 408
    code = "request_timeout"
    retryable = True


class UnsupportedFramingError(RequestError):
    """A transfer coding (501) or HTTP version (505) the server does not implement."""

    status = 501
    code = "unsupported_framing"

    def __init__(self, message: str, *, status: int = 501) -> None:
        super().__init__(message)
        self.status = status


class RouteNotFoundError(RequestError):
    status = 404
    anthropic_type = "not_found_error"
    code = "not_found"


class RecordNotFoundError(RequestError):
    status = 404
    anthropic_type = "not_found_error"
    code = "record_not_found"


class MethodNotAllowedError(RequestError):
    status = 405
    code = "method_not_allowed"


class MisdirectedRequestError(RequestError):
    """The ``Host`` header names a host this gateway does not answer for (DNS rebinding defence)."""

    status = 421
    code = "host_not_allowed"


class ConfigInvalidError(RequestError):
    """A reload was refused: the config on disk has errors (``problems``); the old one keeps serving."""

    status = 422
    code = "config_invalid"

    def __init__(self, message: str, problems: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class ReloadUnavailableError(RequestError):
    status = 409
    code = "reload_unavailable"


class AuthenticationError(LabgateError):
    status = 401
    openai_type = "authentication_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(LabgateError):
    status = 403
    openai_type = "permission_error"
    anthropic_type = "permission_error"
    code = "permission_denied"


class ModelNotFoundError(LabgateError):
    status = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    code = "model_not_found"

    def __init__(self, model: str, suggestions: Sequence[str] = ()) -> None:
        hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"The model {model!r} does not exist or is not routed by this gateway.{hint}",
                         param="model")
        self.model = model
        self.suggestions = tuple(suggestions)


class UnsupportedEndpointError(RequestError):
    code = "unsupported_endpoint"


class UpstreamError(LabgateError):
    """One attempt failed in a way another deployment might not: the attempt loop falls back.

    ``deterministic``: the same deployment would fail the same way if asked again
    (``retryable`` says whether the loop may try another one).
    """

    status = 502
    openai_type = "api_error"
    anthropic_type = "api_error"
    code = "upstream_error"
    retryable = True
    deterministic = False


class UpstreamConnectionError(UpstreamError):
    code = "upstream_connection_error"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"
    openai_type = "timeout_error"
    anthropic_type = "timeout_error"


# Upstream statuses that mean "saturated, come back later": 503, and Anthropic's 529.
OVERLOADED_STATUSES = frozenset({503, 529})


class UpstreamStatusError(UpstreamError):
    code = "upstream_server_error"

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        if upstream_status in OVERLOADED_STATUSES:
            self.anthropic_type = "overloaded_error"


class UpstreamRateLimitError(UpstreamError):
    status = 429
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamBadResponseError(UpstreamError):
    code = "upstream_bad_response"


class UpstreamDeploymentError(UpstreamError):
    """The upstream refused *this deployment* (401/403 bad credentials, 404 model not there).

    The client's request is fine and another deployment (other credentials, another engine)
    may serve it, so the attempt loop falls back. Asking this deployment again will not help:
    when every attempt ends like this, :class:`AllAttemptsFailedError` tells the client not
    to retry (``deterministic``).
    """

    deterministic = True

    code = "upstream_deployment_error"

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class DeploymentBusyError(UpstreamError):
    """The deployment is at capacity (its ``max_parallel_requests`` or its pooled connections).

    Busy is not broken: the attempt loop tries the next candidate (or queues) and never
    counts this against the deployment's circuit.
    """

    status = 503
    anthropic_type = "overloaded_error"
    code = "deployment_busy"

    def __init__(self, message: str, *, retry_after: float | None = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamRejectedError(LabgateError):
    """The upstream refused the request itself (4xx): the same body fails everywhere."""

    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, message: str, *, status: int, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        if status == 413:
            self.anthropic_type = "request_too_large"


class NoHealthyDeploymentError(LabgateError):
    status = 503
    openai_type = "api_error"
    anthropic_type = "overloaded_error"
    code = "no_healthy_deployment"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OverCapacityError(LabgateError):
    """No capacity for this request now: the queue is full (``queue_full``), the wait ran out
    (``queue_timeout``), or the gateway is draining for shutdown (``shutting_down``).

    ``status`` is 429 or 503 (``queue.overflow_status`` in ``gateway.yaml``); ``retry-after`` is always sent.
    """

    status = 503
    openai_type = "api_error"
    anthropic_type = "overloaded_error"
    code = "over_capacity"
    retryable = True

    def __init__(self, message: str, *, code: str, status: int = 503, retry_after: float = 1.0) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.retry_after = retry_after
        if status == 429:
            self.openai_type = self.anthropic_type = "rate_limit_error"


class HistoryUnavailableError(LabgateError):
    """Request history is off (``store.capture: none``) or its store failed to answer."""

    status = 503
    code = "history_unavailable"
    retryable = True


class CacheUnavailableError(LabgateError):
    """The response cache is not configured (no ``cache:``) or its backend failed to answer (admin API)."""

    status = 503
    code = "cache_unavailable"
    retryable = True


class KeysUnavailableError(LabgateError):
    """Virtual keys are off (``auth.virtual_keys: false``) or their store failed to answer (admin API)."""

    status = 503
    code = "keys_unavailable"
    retryable = True


class RateLimitedError(LabgateError):
    """A gateway rate limit (rpm/tpm of a key, model, provider or the whole gateway) is reached."""

    status = 429
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExceededError(LabgateError):
    """A budget (of a key, project, model, provider or the gateway) is spent for its period."""

    status = 429
    openai_type = "insufficient_quota"
    anthropic_type = "rate_limit_error"
    code = "insufficient_quota"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderLimitedError(LabgateError):
    """A provider is over its own ``rate_limits`` or ``budget`` (providers.yaml): the attempt loop passes
    it over like a busy deployment (never a circuit failure) and tries the next candidate. When every
    candidate is over, the client gets :meth:`refusal` (429 with retry-after)."""

    status = 429
    openai_type = anthropic_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True

    def __init__(self, message: str, *, budget: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.budget = budget
        self.retry_after = retry_after
        if budget:
            self.code, self.openai_type = "insufficient_quota", "insufficient_quota"

    @staticmethod
    def refusal(over: Sequence[ProviderLimitedError]) -> LabgateError:
        """Every candidate's provider is over: rate_limit_exceeded if any is a rate (the sooner to pass),
        else insufficient_quota; retry-after the soonest of them."""
        rates = [e for e in over if not e.budget]
        waits = [e.retry_after for e in (rates or over) if e.retry_after is not None]
        wait = min(waits) if waits else None
        causes = "; ".join(e.message for e in (rates or over))
        if rates:
            return RateLimitedError(f"Every deployment for this model is over its provider's limit: {causes}",
                                    retry_after=wait)
        return BudgetExceededError(f"Every deployment for this model is over its provider's budget: {causes}",
                                   retry_after=wait)


class ConnectionLimitError(LabgateError):
    """A new connection over ``server.max_connections`` or ``server.max_connections_per_ip``."""

    status = 503
    anthropic_type = "overloaded_error"
    code = "too_many_connections"
    retryable = True


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """Why one attempt failed: which deployment, and the error it raised."""

    deployment: str
    error: LabgateError


class AllAttemptsFailedError(LabgateError):
    """Every candidate failed; the message names each attempt's cause.

    When every upstream tried refused its deployment for good (401/403/404: a bad
    upstream key, a model the engine does not have), retrying cannot help until the
    operator fixes the config: code ``all_deployments_rejected`` and ``x-should-retry:
    false``. Otherwise the failures may pass and the client may retry.
    """

    code = "all_attempts_failed"
    retryable = True

    def __init__(self, failures: Sequence[AttemptFailure]) -> None:
        causes = "; ".join(f"{f.deployment}: {f.error.message}" for f in failures)
        super().__init__(f"All {len(failures)} attempt(s) failed: {causes}")
        self.failures = tuple(failures)
        # skipped deployments (e.g. endpoint unsupported) say nothing about the upstreams' state
        statuses = {f.error.status for f in failures if not isinstance(f.error, RequestError)}
        if statuses == {504}:
            self.status, self.openai_type, self.anthropic_type = 504, "timeout_error", "timeout_error"
        elif statuses == {429}:
            self.status, self.openai_type, self.anthropic_type = 429, "rate_limit_error", "rate_limit_error"
        elif statuses == {503}:
            self.status = 503  # every deployment was busy: come back shortly
        else:
            self.status = 502
        tried = [f.error for f in failures if not isinstance(f.error, RequestError)]
        if tried and all(e.anthropic_type == "overloaded_error" for e in tried):
            self.anthropic_type = "overloaded_error"  # every upstream is saturated
        if tried and all(getattr(e, "deterministic", False) for e in tried):
            self.code, self.retryable = "all_deployments_rejected", False
        retry_afters = [getattr(f.error, "retry_after", None) for f in failures]
        self.retry_after = min((r for r in retry_afters if r is not None), default=None)


class InternalError(LabgateError):
    """An unexpected exception. Its message is always :data:`INTERNAL_MESSAGE`: what went
    wrong (``detail``) is for the operational log, never for the wire."""

    status = 500
    code = "internal_error"
    retryable = True

    def __init__(self, detail: str = "") -> None:
        super().__init__(INTERNAL_MESSAGE)
        self.detail = detail


INTERNAL_MESSAGE = "The gateway hit an internal error; it has been logged."
