"""Hostile input to virtual keys: any key header, any admin body, gets a well-formed envelope, never a 500."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.audit import mask
from labgate.errors import RequestError
from labgate.keys import KeyRing, KeySpec, VirtualKey, compile_models, digest
from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=4), max_leaves=12)
FIELDS = st.sampled_from(["name", "project", "team", "models", "expires_at", "expires_in_s", "rpm", "tpm",
                          "budget_usd", "budget_period"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(FIELDS | st.text(max_size=8), JSON, max_size=6))
def test_any_admin_body_parses_or_names_the_bad_field(data: dict[str, Any]) -> None:
    try:
        spec = KeySpec.parse(data)
    except RequestError as exc:
        assert exc.status == 400 and exc.message
        return
    for name in ("rpm", "tpm"):
        value = getattr(spec, name)
        assert value is None or (isinstance(value, int) and value >= 1)
    assert spec.models is None or all(isinstance(m, str) for m in spec.models)
    compile_models(spec.models)  # every accepted glob compiles


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_presented_secret_is_either_a_key_or_refused(presented: str) -> None:
    ring = KeyRing(store=None)  # type: ignore[arg-type]  # no store needed: keys are applied by hand
    secret = "lg-" + "a" * 43
    ring.apply({"id": "key_1", "hash": digest(secret), "hint": "aaaa", "name": "n", "project": None, "team": None,
                "models": None, "expires_at": None, "revoked_at": None, "rpm": None, "tpm": None,
                "budget_usd": None, "budget_period": None, "created_at": 1.0, "updated_at": 1.0})
    found = ring.check(presented, time.time())
    assert (found is not None) == (presented == secret)


def test_masking_hides_secret_fields_at_any_depth() -> None:
    entry = {"name": "x", "key": "lg-abc", "nested": [{"api_key": "sk-1", "token": None, "ok": 1}]}
    assert mask(entry) == {"name": "x", "key": "***", "nested": [{"api_key": "***", "token": None, "ok": 1}]}


def test_globs_are_anchored() -> None:
    key = VirtualKey(id="k", name="n", hint="h", models=("gpt-4o",), pattern=compile_models(("gpt-4o",)))
    assert key.allows("gpt-4o") and not key.allows("gpt-4o-mini") and not key.allows("xgpt-4o")
    nothing = VirtualKey(id="k", name="n", hint="h", models=(), pattern=compile_models(()))
    assert not nothing.allows("gpt-4o")


MASTER = "sk-keys-hostile-0123456789"


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RunningGateway,
                                                                                         aiohttp.ClientSession]]:
    monkeypatch.setenv("LABGATE_KEYS_HOSTILE_MASTER", MASTER)
    async with Simulator(models=["m"]) as sim, aiohttp.ClientSession() as http:
        config = config_from({"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}},
                             gateway={"auth": {"master_key_env": "LABGATE_KEYS_HOSTILE_MASTER"},
                                      "store": {"url": str(tmp_path / "h.db")}, "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        async with http.post(running.url + "/admin/keys", json={"name": "k", "models": ["m"]},
                             headers={"authorization": f"Bearer {MASTER}"}) as r:
            assert r.status == 201
        try:
            yield running, http
        finally:
            await running.stop(grace=1.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("value", ["Bearer lg-" + "x" * 5000, "Bearer lg-\u00e9\u00e9", "Bearer lg-", "Basic abc",
                                   "Bearer " + "lg-" * 100, "bearer\tlg-abc"])
async def test_hostile_key_headers_get_a_401_envelope(served: tuple[RunningGateway, aiohttp.ClientSession],
                                                      value: str) -> None:
    running, http = served
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(running.url + "/v1/chat/completions", json=body,
                         headers={"authorization": value.encode("utf-8").decode("latin-1")}) as r:
        data = orjson.loads(await r.read())
        assert r.status == 401 and data["error"]["type"] == "authentication_error"
        assert r.headers["x-request-id"] == data["request_id"]


@pytest.mark.asyncio
@pytest.mark.parametrize("raw", [b"\xff\xfe", b"[]", b"{" * 10000, b'{"name": "' + b"x" * 70000 + b'"}', b"null"])
async def test_hostile_admin_bodies_get_a_400_envelope(served: tuple[RunningGateway, aiohttp.ClientSession],
                                                       raw: bytes) -> None:
    running, http = served
    async with http.post(running.url + "/admin/keys", data=raw,
                         headers={"authorization": f"Bearer {MASTER}", "content-type": "application/json"}) as r:
        data = orjson.loads(await r.read())
        assert r.status == 400 and data["error"]["type"] == "invalid_request_error"
