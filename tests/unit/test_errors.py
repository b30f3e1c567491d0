"""The error hierarchy: what a failed fallback tells the client, and what a 500 says."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from labgate.errors import (
    INTERNAL_MESSAGE,
    AllAttemptsFailedError,
    AttemptFailure,
    InternalError,
    LabgateError,
    UnsupportedEndpointError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamDeploymentError,
    UpstreamRateLimitError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

CAUSES: list[LabgateError] = [
    UpstreamDeploymentError("401", upstream_status=401),
    UpstreamDeploymentError("403", upstream_status=403),
    UpstreamDeploymentError("404", upstream_status=404),
    UpstreamStatusError("500", upstream_status=500),
    UpstreamStatusError("529", upstream_status=529),
    UpstreamConnectionError("reset"),
    UpstreamTimeoutError("slow"),
    UpstreamRateLimitError("429", retry_after=3),
    UpstreamBadResponseError("not json"),
    UnsupportedEndpointError("no embeddings here"),
]


@given(st.lists(st.sampled_from(CAUSES), min_size=1, max_size=6))
def test_a_failed_fallback_is_final_only_when_every_upstream_refused_its_deployment(causes: list) -> None:
    error = AllAttemptsFailedError([AttemptFailure(f"p{i}/m", c) for i, c in enumerate(causes)])
    tried = [c for c in causes if not isinstance(c, UnsupportedEndpointError)]
    refused = bool(tried) and all(isinstance(c, UpstreamDeploymentError) for c in tried)
    assert (error.code, error.should_retry) == (
        ("all_deployments_rejected", False) if refused else ("all_attempts_failed", True))
    if refused:
        assert (error.status, error.openai_type, error.anthropic_type) == (502, "api_error", "api_error")


def test_a_deployment_refusal_is_deterministic_and_the_others_are_not() -> None:
    assert [(type(c).__name__, getattr(c, "deterministic", None)) for c in CAUSES] == [
        ("UpstreamDeploymentError", True), ("UpstreamDeploymentError", True), ("UpstreamDeploymentError", True),
        ("UpstreamStatusError", False), ("UpstreamStatusError", False), ("UpstreamConnectionError", False),
        ("UpstreamTimeoutError", False), ("UpstreamRateLimitError", False), ("UpstreamBadResponseError", False),
        ("UnsupportedEndpointError", None)]


def test_an_internal_error_says_only_the_public_message() -> None:
    error = InternalError("KeyError: 'secret' in handler")
    assert (error.status, error.code, error.message, str(error), error.detail) == (
        500, "internal_error", "The gateway hit an internal error; it has been logged.",
        "The gateway hit an internal error; it has been logged.", "KeyError: 'secret' in handler")
    assert InternalError().message == INTERNAL_MESSAGE
