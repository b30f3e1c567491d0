"""API keys: who may call, what a record keeps, and where a key is read from."""

from __future__ import annotations

import hashlib

import pytest

from labgate.auth import Auth, key_id, presented_key
from labgate.errors import AuthenticationError


def test_no_keys_means_no_auth() -> None:
    for auth in (Auth([]), Auth(["", ""])):
        assert (auth.enabled, auth.check(None), auth.check("anything")) == (False, None, None)


def test_a_configured_key_is_accepted_and_identified_by_a_hash_prefix() -> None:
    auth = Auth(["sk-lab-1", "sk-lab-2"])
    expected = "key-" + hashlib.sha256(b"sk-lab-2").hexdigest()[:12]
    assert (auth.enabled, auth.check("sk-lab-2"), key_id("sk-lab-2")) == (True, expected, expected)
    assert auth.check("sk-lab-1") != auth.check("sk-lab-2")


@pytest.mark.parametrize(("presented", "message"), [
    (None, "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."),
    ("", "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."),
    ("sk-lab", "Incorrect API key provided."),
    ("sk-lab-1 ", "Incorrect API key provided."),
    ("sk-läb-1", "Incorrect API key provided."),
])
def test_missing_or_wrong_key_is_refused(presented: str | None, message: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        Auth(["sk-lab-1"]).check(presented)
    assert (info.value.status, info.value.openai_type, info.value.code, info.value.should_retry,
            info.value.message) == (401, "authentication_error", "invalid_api_key", False, message)


@pytest.mark.parametrize(("headers", "key"), [
    ({"authorization": "Bearer sk-1"}, "sk-1"),
    ({"authorization": "bearer   sk-1  "}, "sk-1"),
    ({"x-api-key": "sk-2"}, "sk-2"),
    ({"authorization": "Bearer sk-1", "x-api-key": "sk-2"}, "sk-1"),
    ({"authorization": "Bearer ", "x-api-key": "sk-2"}, "sk-2"),
    ({"authorization": "Basic dXNlcjpwdw==", "x-api-key": "sk-2"}, "sk-2"),
    ({"authorization": "Basic dXNlcjpwdw=="}, None),
    ({"x-api-key": ""}, None),
    ({}, None),
])
def test_presented_key_reads_bearer_then_x_api_key(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers) == key


def test_admin_needs_the_key_or_else_a_loopback_client() -> None:
    from labgate.auth import admit_admin
    from labgate.errors import PermissionDeniedError

    open_gateway = Auth([])
    admit_admin(open_gateway, {}, "127.0.0.1")
    admit_admin(open_gateway, {}, "::1")
    admit_admin(open_gateway, {}, None)  # a Unix socket
    with pytest.raises(PermissionDeniedError):
        admit_admin(open_gateway, {}, "10.1.2.3")
    keyed = Auth(["sk-admin"])
    admit_admin(keyed, {"authorization": "Bearer sk-admin"}, "10.1.2.3")
    with pytest.raises(AuthenticationError):
        admit_admin(keyed, {}, "127.0.0.1")
