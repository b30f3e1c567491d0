"""Virtual keys end to end: ``/admin/keys``, the CLI, and what a client sees on ``/v1/*``."""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio
MASTER = "sk-admin-keys-test-0123456789"

Served = tuple[RunningGateway, aiohttp.ClientSession, Path, io.BytesIO]


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv("LABGATE_KEYS_TEST_MASTER", MASTER)
    log = io.BytesIO()
    async with Simulator(models=["gpt-4o", "gpt-4o-mini", "llama3"]) as sim, aiohttp.ClientSession() as http:
        provider = {"type": "openai_compatible", "base_url": sim.url + "/v1",
                    "models": ["gpt-4o", "gpt-4o-mini", "llama3"]}
        db = tmp_path / "h.db"
        config = config_from({"sim": provider},
                             gateway={"auth": {"master_key_env": "LABGATE_KEYS_TEST_MASTER", "keys_refresh_s": 0.2},
                                      "store": {"url": str(db), "capture": "full"}})
        running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(log))
        try:
            yield running, http, db, log
        finally:
            await running.stop(grace=1.0)


async def call(served: Served, method: str, path: str, *, key: str | None = MASTER,
               body: Any = None) -> tuple[int, Any, Any]:
    running, http, _, _ = served
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with http.request(method, running.url + path, headers=headers, json=body) as r:
        data = await r.read()
        return r.status, orjson.loads(data) if data else None, r.headers


async def chat(served: Served, key: str | None, model: str = "gpt-4o") -> tuple[int, Any, Any]:
    return await call(served, "POST", "/v1/chat/completions", key=key,
                      body={"model": model, "messages": [{"role": "user", "content": "hi"}]})


async def test_create_use_rotate_revoke_over_the_admin_api(served: Served) -> None:
    status, created, _ = await call(served, "POST", "/admin/keys",
                                    body={"name": "alice", "project": "lab", "models": ["gpt-4o*"]})
    assert status == 201
    secret = created["key"]
    assert secret.startswith("lg-") and created["key_hint"] == "lg-…" + secret[-4:]
    assert (await chat(served, secret))[0] == 200
    # allowed models are globs: gpt-4o-mini matches gpt-4o*, llama3 does not
    assert (await chat(served, secret, "gpt-4o-mini"))[0] == 200
    status, body, headers = await chat(served, secret, "llama3")
    assert (status, body["error"]["code"]) == (403, "model_not_allowed")
    assert headers["x-request-id"] == body["request_id"]
    # the master key keeps working, for API calls and for the admin API
    assert (await chat(served, MASTER, "llama3"))[0] == 200
    # a virtual key is never an admin
    assert (await call(served, "GET", "/admin/keys", key=secret))[0] == 401
    # without a key, or with a wrong one: refused now that keys exist
    assert (await chat(served, None))[0] == 401
    assert (await chat(served, "lg-" + "x" * 43))[0] == 401

    status, rotated, _ = await call(served, "POST", f"/admin/keys/{created['id']}/rotate")
    assert status == 200 and rotated["id"] == created["id"] and rotated["key"] != secret
    status, body, _ = await chat(served, secret)
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    assert (await chat(served, rotated["key"]))[0] == 200

    status, revoked, _ = await call(served, "POST", "/admin/keys/alice/revoke")
    assert (status, revoked["status"]) == (200, "revoked")
    status, body, _ = await chat(served, rotated["key"])
    assert (status, body["error"]["code"]) == (401, "key_revoked")
    assert "revoked" in body["error"]["message"]
    # Anthropic clients get their own envelope
    status, body, _ = await call(served, "POST", "/v1/messages", key=rotated["key"],
                                 body={"model": "gpt-4o", "max_tokens": 5,
                                       "messages": [{"role": "user", "content": "hi"}]})
    assert (status, body["type"], body["error"]["type"]) == (401, "error", "authentication_error")

    status, listing, _ = await call(served, "GET", "/admin/keys")
    assert [(k["name"], k["status"]) for k in listing["data"]] == [("alice", "revoked")]
    assert "hash" not in listing["data"][0] and "key" not in listing["data"][0]
    status, trail, _ = await call(served, "GET", "/admin/audit?action=key.")
    assert [e["action"] for e in trail["data"]] == ["key.revoke", "key.rotate", "key.create"]
    assert all(e["actor"].startswith("master:key-") for e in trail["data"])


async def test_expired_keys_are_refused(served: Served) -> None:
    status, created, _ = await call(served, "POST", "/admin/keys", body={"name": "brief", "expires_in_s": 1})
    assert status == 201
    assert (await chat(served, created["key"]))[0] == 200
    await asyncio.sleep(1.1)
    status, body, _ = await chat(served, created["key"])
    assert (status, body["error"]["code"]) == (401, "key_expired")


async def test_bad_admin_bodies_get_envelopes(served: Served) -> None:
    for body in ({}, {"name": ""}, {"name": "x", "rpm": -1}, {"name": "x", "models": "gpt"},
                 {"name": "x", "budget_period": "fortnight"}, {"name": "x", "surprise": 1}, [1], "s"):
        status, answer, headers = await call(served, "POST", "/admin/keys", body=body)
        assert status == 400, body
        assert answer["error"]["type"] == "invalid_request_error" and headers["x-request-id"]
    status, answer, _ = await call(served, "GET", "/admin/keys/nobody")
    assert (status, answer["error"]["code"]) == (404, "record_not_found")
    status, answer, _ = await call(served, "POST", "/admin/keys/nobody/explode")
    assert status == 400


async def test_hashed_at_rest_and_never_logged(served: Served) -> None:
    running, _, db, log = served
    _, created, _ = await call(served, "POST", "/admin/keys", body={"name": "carol"})
    secret = created["key"]
    for _ in range(2):
        assert (await chat(served, secret))[0] == 200
    assert running.gateway.history is not None
    await running.gateway.history.flush()
    raw = db.read_bytes() + b"".join(p.read_bytes() for p in db.parent.glob("h.db*"))
    assert secret.encode() not in raw and secret[3:].encode() not in raw
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT hash FROM api_keys WHERE id = ?", (created["id"],)).fetchone()[0]
        import hashlib
        assert stored == hashlib.sha256(secret.encode()).hexdigest()
        rows = conn.execute("SELECT * FROM requests").fetchall()
    assert rows and all(secret not in repr(row) for row in rows)
    with sqlite3.connect(db) as conn:
        assert {r[0] for r in conn.execute("SELECT DISTINCT key_id FROM requests")} == {created["id"]}
    running.gateway.runtime.access_log.flush()
    assert secret.encode() not in log.getvalue() and created["id"].encode() in log.getvalue()


async def test_a_revocation_from_another_process_is_seen_within_a_second(served: Served) -> None:
    _, _, db, _ = served
    _, created, _ = await call(served, "POST", "/admin/keys", body={"name": "dave"})
    assert (await chat(served, created["key"]))[0] == 200
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "labgate", "keys", "revoke", "dave",
                                                    "--store", str(db)], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()
    while (await chat(served, created["key"]))[0] == 200:
        assert time.monotonic() - revoked_at < 1.0, "the revocation took more than a second to reach the gateway"
        await asyncio.sleep(0.02)
    status, body, _ = await chat(served, created["key"])
    assert (status, body["error"]["code"]) == (401, "key_revoked")


async def test_keys_off_means_the_master_key_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_KEYS_TEST_MASTER", MASTER)
    async with Simulator(models=["m"]) as sim, aiohttp.ClientSession() as http:
        config = config_from({"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}},
                             gateway={"auth": {"master_key_env": "LABGATE_KEYS_TEST_MASTER", "virtual_keys": False},
                                      "store": {"url": str(tmp_path / "h.db")}, "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            assert running.gateway.runtime.auth.keyring is None
            served = (running, http, tmp_path, io.BytesIO())
            status, body, _ = await call(served, "POST", "/admin/keys", body={"name": "x"})
            assert (status, body["error"]["code"]) == (503, "keys_unavailable")
        finally:
            await running.stop(grace=1.0)


async def test_cache_flushes_are_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_KEYS_TEST_MASTER", MASTER)
    async with Simulator(models=["m"]) as sim, aiohttp.ClientSession() as http:
        config = config_from({"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}},
                             gateway={"auth": {"master_key_env": "LABGATE_KEYS_TEST_MASTER"}, "cache": {},
                                      "store": {"url": str(tmp_path / "h.db")}, "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            served = (running, http, tmp_path, io.BytesIO())
            assert (await call(served, "POST", "/admin/cache/flush"))[0] == 200
            status, trail, _ = await call(served, "GET", "/admin/audit?action=cache.flush")
            assert status == 200 and len(trail["data"]) == 1
            assert trail["data"][0]["after"] == {"deleted": 0} and trail["data"][0]["actor"].startswith("master:")
            status, body, _ = await call(served, "GET", "/admin/audit?since=abc")
            assert (status, body["error"]["param"]) == (400, "since")
        finally:
            await running.stop(grace=1.0)


async def test_patch_changes_models_and_limits_at_once(served: Served) -> None:
    _, created, _ = await call(served, "POST", "/admin/keys", body={"name": "erin", "models": ["llama3"]})
    assert (await chat(served, created["key"], "gpt-4o"))[0] == 403
    status, updated, _ = await call(served, "PATCH", f"/admin/keys/{created['id']}",
                                    body={"models": ["gpt-*"], "rpm": 1, "project": "lab"})
    assert status == 200 and (updated["models"], updated["rpm"], updated["project"]) == (["gpt-*"], 1, "lab")
    assert updated["key_hint"] == created["key_hint"]  # the secret stays
    assert (await chat(served, created["key"], "gpt-4o"))[0] == 200
    status, body, _ = await chat(served, created["key"], "gpt-4o")
    assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")  # the new rpm applies
    status, trail, _ = await call(served, "GET", "/admin/audit?action=key.update")
    assert trail["data"][0]["before"]["models"] == ["llama3"] and trail["data"][0]["after"]["rpm"] == 1
    status, body, _ = await call(served, "PATCH", f"/admin/keys/{created['id']}", body={"rpm": "many"})
    assert (status, body["error"]["param"]) == (400, "rpm")
