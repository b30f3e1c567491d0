"""An upstream that echoes our credential back: the secret must show up nowhere.

The hostile upstream answers every request with an error that quotes the
``authorization`` / ``x-api-key`` header it received, the way real APIs say
"Incorrect API key provided: sk-…". Through a real gateway, the secret must
be masked in the client's envelope (OpenAI and Anthropic dialects, whole and
streamed), the access log, request history and ``/health/providers``.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from labgate.errors import LabgateError
from labgate.providers.http import error_for_status
from labgate.redact import MASK, redact, secrets_in
from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing.gateway import config_from
from labgate.testing.hostile import HostileUpstream, Received, Step, response

OPENAI_KEY = "sk-proj-Zx81TQvLq0aBcDeFgHiJkLmNoPqRsT"
ANTHROPIC_KEY = "sk-ant-api03-QwErTyUiOpAsDfGhJkLzXcVbNm0123"
ODD_KEY = "zq9.unusual~credential~value"  # looks like nothing: only the configured value can catch it
ADMIN_KEY = "labgate-admin-0123456789abcdef"
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, ODD_KEY)


# --- the function


@pytest.mark.parametrize(("text", "expected"), [
    ("Incorrect API key provided: sk-proj-abcdefghijklmnop1234.", "Incorrect API key provided: ***"),
    ("invalid x-api-key: sk-ant-api03-AAAAAAAAAAAAAAAAAAAA", "invalid x-api-key: ***"),
    ("header was Authorization: Bearer abc.def-ghijklmnop", "header was Authorization: Bearer ***"),
    ('{"api_key": "zzzzzzzzzzzzzzzz"}', '{"api_key": "***"}'),
    ("token=abcdefgh123&x=1", "token=***&x=1"),
    ("client_secret: s3cr3t-v4lue", "client_secret: ***"),
    ("key sk-abcdefghijklmnopqrst in text", "key sk-*** in text"),
    ("jwt eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4", "jwt ***"),
    ("google AIzaSyA1234567890abcdefghijklmnopqrstu", "google AIza***"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws AKIA***"),
    ("gh ghp_abcdefghijklmnopqrstuvwxyz0123", "gh ghp_***"),
    ("hf hf_abcdefghijklmnopqrstuv", "hf hf_***"),
    # what must stay readable
    ("max_tokens: 4096 is over the limit", "max_tokens: 4096 is over the limit"),
    ("model 'gpt-4o' not found", "model 'gpt-4o' not found"),
    ("The server is overloaded", "The server is overloaded"),
    ("a task-based approach", "a task-based approach"),
])
def test_redact_masks_credentials_and_keeps_the_rest(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_masks_configured_values_whatever_they_look_like() -> None:
    assert redact(f"your key {ODD_KEY} is wrong", [ODD_KEY]) == f"your key {MASK} is wrong"
    assert redact("short ab1 stays", ["ab1"]) == "short ab1 stays"  # too short to mask verbatim


def test_secrets_in_takes_credential_headers_only() -> None:
    assert secrets_in({"authorization": f"Bearer {OPENAI_KEY}", "x-api-key": ANTHROPIC_KEY,
                       "anthropic-version": "2023-06-01", "x-custom-token": ODD_KEY}) == (
        OPENAI_KEY, ANTHROPIC_KEY, ODD_KEY)


def test_error_for_status_redacts_the_message_and_param() -> None:
    body = orjson.dumps({"error": {"message": f"Incorrect API key provided: {ODD_KEY}", "param": OPENAI_KEY}})
    error = error_for_status(400, body, {}, "provider 'p'", secrets=[ODD_KEY])
    assert error.message == "provider 'p' answered 400: Incorrect API key provided: ***"
    assert error.param == "sk-proj-***"


# --- through a gateway


def echo_credential(request: Received) -> Sequence[Step]:
    """Every request is refused with the credential it carried, quoted back."""
    head = request.head.decode("latin-1")
    sent = [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
            if line.lower().startswith(("authorization:", "x-api-key:"))]
    credential = sent[0] if sent else "(none)"
    message = f"Incorrect API key provided: {credential}. Also: your key {credential.removeprefix('Bearer ')}."
    body = orjson.dumps({"type": "error", "error": {"type": "authentication_error", "message": message}})
    return [response(body, status="401 Unauthorized")]


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[RunningGateway, HostileUpstream, io.BytesIO, aiohttp.ClientSession]]:
    monkeypatch.setenv("POOLTEST_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("POOLTEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("POOLTEST_ODD_KEY", ODD_KEY)
    monkeypatch.setenv("POOLTEST_ADMIN_KEY", ADMIN_KEY)
    async with HostileUpstream(echo_credential) as up, aiohttp.ClientSession() as http:
        providers = {
            "oai": {"type": "openai_compatible", "base_url": up.url + "/v1", "api_key_env": "POOLTEST_OPENAI_KEY",
                    "models": ["m-oai"]},
            "odd": {"type": "openai_compatible", "base_url": up.url + "/v1", "api_key_env": "POOLTEST_ODD_KEY",
                    "models": ["m-odd"]},
            "ant": {"type": "anthropic", "base_url": up.url, "api_key_env": "POOLTEST_ANTHROPIC_KEY",
                    "models": ["m-ant"]},
        }
        config = config_from(providers, gateway={"auth": {"master_key_env": "POOLTEST_ADMIN_KEY"},
                                                 "store": {"url": str(tmp_path / "h.db"), "capture": "full"}})
        log = io.BytesIO()
        running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(log))
        try:
            yield running, up, log, http
        finally:
            await running.stop(grace=1.0)


def assert_no_secret(text: str | bytes, where: str) -> None:
    data = text.decode("latin-1") if isinstance(text, bytes) else text
    for secret in SECRETS:
        assert secret not in data, f"{where} shows {secret!r}: {data[:500]}"
    assert "Incorrect API key provided" in data or where.startswith("health"), where  # the text is still there


AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.mark.asyncio
async def test_an_echoed_key_reaches_no_client_log_history_or_health(served: Any) -> None:
    running, up, log, http = served
    calls: list[tuple[str, dict[str, Any]]] = []
    for model in ("m-oai", "m-odd", "m-ant"):
        for stream in (False, True):
            calls.append(("/v1/chat/completions", {"model": model, "stream": stream,
                                                   "messages": [{"role": "user", "content": "hi"}]}))
    calls.append(("/v1/messages", {"model": "m-ant", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
    calls.append(("/v1/messages", {"model": "m-ant", "max_tokens": 5, "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]}))
    ids = []  # labgate's own request ids: the history is looked up by them
    for path, body in calls:
        async with http.post(running.url + path, json=body, headers=AUTH) as r:
            ids.append(r.headers["x-request-id"])
            data = await r.read()
            assert r.status in (502, 503, 529), (path, body, data)  # 503/529: the circuit opened meanwhile
            assert_no_secret(data, f"client {path} {body['model']} stream={body.get('stream')}")
    # the upstream did receive (and echo) each credential: the test exercised them
    heads = b"".join(request.head for request in up.requests).decode("latin-1")
    assert all(secret in heads for secret in SECRETS)

    running.gateway.runtime.access_log.flush()
    lines = log.getvalue().splitlines()
    assert len(lines) == len(calls)
    for line in lines:
        assert_no_secret(line, "access log")

    assert running.gateway.history is not None
    await running.gateway.history.flush()
    for request_id in ids:
        async with http.get(running.url + f"/admin/history/{request_id}", headers=AUTH) as r:
            assert r.status == 200
            assert_no_secret(await r.read(), f"history {request_id}")

    async with http.get(running.url + "/health/providers", headers=AUTH) as r:
        report = orjson.loads(await r.read())
    assert {name: entry["reachable"] for name, entry in report["providers"].items()} == {
        "oai": False, "odd": False, "ant": False}
    for name, entry in report["providers"].items():
        assert entry["error"].endswith("Also: your key ***."), entry
        assert_no_secret(orjson.dumps(entry), f"health {name}")


@pytest.mark.parametrize("tap", ["passthrough", "translated"])
def test_an_error_event_inside_an_anthropic_stream_is_redacted(tap: str) -> None:
    from labgate.providers.anthropic.passthrough import MessageTap
    from labgate.providers.anthropic.stream import StreamTranslator
    from labgate.providers.base import StreamInfo

    translator: MessageTap | StreamTranslator
    if tap == "passthrough":
        translator = MessageTap(StreamInfo(), where="provider 'ant'", secrets=(ODD_KEY,))
    else:
        translator = StreamTranslator(StreamInfo(), include_usage=False, created=0, where="provider 'ant'",
                                      secrets=(ODD_KEY,))
    message = f"bad credential {ODD_KEY} / {ANTHROPIC_KEY}"
    event = b"event: error\ndata: " + orjson.dumps(
        {"type": "error", "error": {"type": "authentication_error", "message": message}}) + b"\n\n"
    with pytest.raises(LabgateError) as caught:
        translator.feed(event)
    assert caught.value.message == "provider 'ant' (in its stream) answered 401: bad credential *** / sk-ant-***"
