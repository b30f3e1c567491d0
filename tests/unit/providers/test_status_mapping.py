"""How an upstream's non-2xx answer maps onto our errors (and so: fall back or not)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from labgate.errors import (
    UpstreamBadResponseError,
    UpstreamDeploymentError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from labgate.providers.http import MAX_RETRY_AFTER_S, error_for_status, parse_json, retry_after, upstream_snippet

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


# --- the message, the param and Retry-After, read from whatever an upstream sends (mutation-tested)


@pytest.mark.parametrize(("body", "message"), [
    (b"", "(empty body)"),
    (b"\xffoops ", "\ufffdoops"),  # not UTF-8: replaced, not an exception
    (b"x" * 300, "x" * 200),  # a body that is not JSON is quoted up to 200 bytes
    (b'{"message": "overloaded"}', "overloaded"),  # no "error" member: the object itself
    (b'{"error": "plain words"}', "plain words"),
    (b'{"error": {"type": "x"}}', "{'error': {'type': 'x'}}"),  # no message: the whole object
    (b"[" + b"1," * 150 + b"1]", str([1] * 151)[:200]),
])
def test_the_message_of_any_error_body(body: bytes, message: str) -> None:
    assert error_for_status(500, body, {}, "provider 'p'").message == f"provider 'p' answered 500: {message}"


def test_the_message_is_redacted_with_the_providers_own_credentials() -> None:
    body = b'{"error": {"message": "key plainwordsecret123 is not valid"}}'
    error = error_for_status(400, body, {}, "provider 'p'", secrets=["plainwordsecret123"])
    assert error.message == "provider 'p' answered 400: key *** is not valid"


@pytest.mark.parametrize(("body", "param"), [
    (b'{"error": {"message": "m"}}', None),
    (b'{"error": {"message": "m", "param": 5}}', None),  # not a string: dropped
    (b'{"error": "m"}', None),
    (b'{"error": {"message": "m", "param": "' + b"p" * 150 + b'"}}', "p" * 100),
])
def test_the_param_of_a_rejection(body: bytes, param: str | None) -> None:
    error = error_for_status(400, body, {}, "provider 'p'")
    assert isinstance(error, UpstreamRejectedError)
    assert error.param == param


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_deployment_error_keeps_the_upstream_status(status: int) -> None:
    error = error_for_status(status, b"{}", {}, "provider 'p'")
    assert isinstance(error, UpstreamDeploymentError)
    assert error.upstream_status == status


@pytest.mark.parametrize("name", ["retry-after", "Retry-After"])
def test_retry_after_is_read_from_a_plain_mapping_in_either_spelling(name: str) -> None:
    error = error_for_status(429, b"", {name: "7"}, "provider 'p'")
    assert isinstance(error, UpstreamRateLimitError)
    assert error.retry_after == 7.0


def test_retry_after_values() -> None:
    assert (retry_after(None), retry_after("0"), retry_after("0.5"), retry_after("-3")) == (None, 0.0, 0.5, 0.0)
    assert (retry_after("inf"), retry_after("nan"), retry_after("soon")) == (None, None, None)
    assert retry_after("99999") == MAX_RETRY_AFTER_S
    in_a_minute = retry_after(format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True))
    assert in_a_minute is not None and 50 <= in_a_minute <= 61  # an HTTP date: seconds from now
    assert retry_after(format_datetime(datetime.now(UTC) - timedelta(seconds=60), usegmt=True)) == 0.0


def test_upstream_snippet_quotes_bytes_as_bytes_and_text_as_text() -> None:
    assert upstream_snippet(b"\xe9" + b"a" * 100) == repr(b"\xe9" + b"a" * 79)  # 80 bytes by default
    assert upstream_snippet("\xe9" + "a" * 100, 5) == repr("\xe9aaaa")
    assert upstream_snippet(None) == "'None'"
    assert upstream_snippet("token sk-abcdefghijklmnopqrstuvwxyz0123") == repr("token sk-***")


def test_parse_json_says_what_it_got_instead() -> None:
    assert parse_json(b'{"a": [1]}', "provider 'p'") == {"a": [1]}
    body = b"x" * 79 + "\xe9".encode() + b"y" * 50  # a character across byte 80: cut, and replaced
    with pytest.raises(UpstreamBadResponseError) as caught:
        parse_json(body, "provider 'p'")
    assert caught.value.message == f"provider 'p' sent a body that is not JSON: {'x' * 79 + chr(0xfffd)!r}"
    with pytest.raises(UpstreamBadResponseError) as caught:
        parse_json(b"\xffno", "provider 'p'")
    assert caught.value.message == f"provider 'p' sent a body that is not JSON: {chr(0xfffd) + 'no'!r}"
