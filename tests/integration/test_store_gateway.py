"""Through a real gateway: every request leaves one record, however it ends, in SQLite and PostgreSQL.

Each test runs a gateway (real server on an ephemeral port) in front of the
provider simulator, with ``store.url`` pointing at a fresh store, and stops
it without an explicit flush: what the records show was written by the
clean-shutdown flush or before it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.auth import key_id
from labgate.server.serve import RunningGateway, start_gateway
from labgate.store import query, store_for
from labgate.testing import Behaviour, CutStream, Simulator, Status
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio
KEY = "sk-history-test-key-0123456789"
SIM8 = " sim1 sim2 sim3 sim4 sim5 sim6 sim7 sim8"


@contextlib.asynccontextmanager
async def gateway(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[RunningGateway, Simulator, Simulator]]:
    monkeypatch.setenv("LABGATE_HISTORY_TEST_KEY", KEY)
    async with Simulator(models=["m1", "slow"], per_model={"slow": Behaviour(tokens_per_s=20)}) as good, \
            Simulator(Behaviour(fault=Status(503)), models=["m2"]) as bad:
        providers = {"bad": {"type": "openai_compatible", "base_url": bad.url + "/v1", "models": ["m2"]},
                     "good": {"type": "openai_compatible", "base_url": good.url + "/v1", "models": ["m1", "slow"]}}
        mappings = {"routing": {"exact_matches": {"m2": {"provider": "bad", "fallback_chain": ["good/m1"]}}}}
        config = config_from(providers, mappings, {"auth": {"master_key_env": "LABGATE_HISTORY_TEST_KEY"},
                                                   "store": {"capture": "full", **store},
                                                   "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            yield running, good, bad
        finally:
            await running.stop(grace=2.0)


async def records(url: str) -> dict[str, dict[str, Any]]:
    store = store_for(url)
    await store.open()
    try:
        return {r["client_request_id"]: r async for r in query.walk(store, query.Filter())}  # by the id sent
    finally:
        await store.aclose()


def headers(rid: str, key: str | None = KEY) -> dict[str, str]:
    out = {"x-request-id": rid}
    if key:
        out["authorization"] = f"Bearer {key}"
    return out


def chat(model: str, text: str = "Hello  There", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def view(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("model", "provider", "stream", "status", "outcome", "error_type", "response", "prompt", "attempts",
            "completion_tokens", "finish_reason", "capture", "messages", "key_id")
    return {k: record[k] for k in keep}


async def test_every_outcome_leaves_one_record(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway({"url": store_url}, monkeypatch) as (running, good, _bad), aiohttp.ClientSession() as http:
        url = running.url + "/v1/chat/completions"
        async with http.post(url, json=chat("m1", temperature=0.3), headers=headers("ok")) as r:
            assert (r.status, (await r.json())["choices"][0]["message"]["content"]) == (200, SIM8)
        async with http.post(url, json=chat("m1", stream=True, stream_options={"include_usage": True}),
                             headers=headers("stream")) as r:
            assert r.status == 200 and (await r.read()).endswith(b"data: [DONE]\n\n")
        async with http.post(url, json=chat("m1"), headers=headers("no-key", key=None)) as r:
            assert r.status == 401
        async with http.post(url, json=chat("m9"), headers=headers("unknown")) as r:
            assert r.status == 404
        async with http.post(url, json=chat("m2"), headers=headers("fallback")) as r:
            assert r.status == 200  # bad answered 503; the chain went on to good/m1
        good.set(Behaviour(fault=CutStream(after=3)))
        async with http.post(url, json=chat("m1", "cut me", stream=True), headers=headers("cut")) as r:
            assert b'"code":"upstream_connection_error"' in await r.read()
        good.set(Behaviour())
        async with http.post(url, json=chat("slow", "leave early", stream=True), headers=headers("left")) as r:
            async for _ in r.content.iter_any():  # the role chunk and maybe a token, then we hang up
                break
            r.close()
        for _ in range(100):  # the gateway notices the hang-up and closes the record
            stats = running.gateway.history.stats() if running.gateway.history is not None else {}
            if stats["written"] + stats["queued"] >= 7:
                break
            await asyncio.sleep(0.02)
    found = await records(store_url)
    user = [{"role": "user", "content": "Hello  There"}]
    base = {"stream": False, "error_type": None, "capture": "full", "messages": user, "prompt": "hello there",
            "key_id": key_id(KEY)}
    assert {rid: view(r) for rid, r in found.items()} == {
        "ok": {**base, "model": "m1", "provider": "good", "status": 200, "outcome": "ok", "response": SIM8,
               "attempts": 1, "completion_tokens": 8, "finish_reason": "stop"},
        "stream": {**base, "model": "m1", "provider": "good", "stream": True, "status": 200, "outcome": "ok",
                   "response": SIM8, "attempts": 1, "completion_tokens": 8, "finish_reason": "stop"},
        "no-key": {**base, "model": None, "provider": None, "status": 401, "outcome": "error",
                   "error_type": "invalid_api_key", "response": None, "prompt": None, "attempts": 0,
                   "completion_tokens": None, "finish_reason": None, "messages": None, "key_id": None},
        "unknown": {**base, "model": "m9", "provider": None, "status": 404, "outcome": "error",
                    "error_type": "model_not_found", "response": None, "attempts": 0, "completion_tokens": None,
                    "finish_reason": None},
        "fallback": {**base, "model": "m2", "provider": "good", "status": 200, "outcome": "ok", "response": SIM8,
                     "attempts": 2, "completion_tokens": 8, "finish_reason": "stop"},
        "cut": {**base, "model": "m1", "provider": "good", "stream": True, "status": 200,
                "outcome": "stream_error", "error_type": "upstream_connection_error", "response": " sim1 sim2",
                "prompt": "cut me", "messages": [{"role": "user", "content": "cut me"}], "attempts": 1,
                "completion_tokens": None, "finish_reason": None},
        "left": {**base, "model": "slow", "provider": "good", "stream": True, "status": 499,
                 "outcome": "client_disconnected", "response": found["left"]["response"], "prompt": "leave early",
                 "messages": [{"role": "user", "content": "leave early"}], "attempts": 1,
                 "completion_tokens": None, "finish_reason": None},
    }
    # what had been relayed when the hang-up was noticed (a write or two later on a busy machine): a strict prefix
    left = found["left"]["response"]
    assert left is None or (SIM8.startswith(left) and left != SIM8), left
    assert found["fallback"]["failed_attempts"] == [
        {"deployment": "bad/m2", "error": "upstream_server_error", "message": found["fallback"]["failed_attempts"][0]
         ["message"]}]
    assert "503" in found["fallback"]["failed_attempts"][0]["message"]
    assert found["ok"]["parameters"] == {"temperature": 0.3} and found["ok"]["temperature"] == 0.3
    assert found["stream"]["parameters"] == {"stream_options": {"include_usage": True}}
    assert found["ok"]["client_ip"] == "127.0.0.1"
    assert all(r["response_time_ms"] > 0 for r in found.values())
    assert found["stream"]["ttft_ms"] <= found["stream"]["response_time_ms"]
    assert KEY not in orjson.dumps(list(found.values())).decode()  # the key itself is never stored


async def test_metadata_capture_stores_no_content(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = {"url": store_url, "capture": "metadata", "client_ip": False}
    async with gateway(store, monkeypatch) as (running, _good, _bad), aiohttp.ClientSession() as http:
        for rid, stream in (("plain", False), ("streamed", True)):
            body = chat("m1", "a secret prompt", stream=stream, max_tokens=5, user="alice", tools=[
                {"type": "function", "function": {"name": "secret_tool", "parameters": {}}}])
            async with http.post(running.url + "/v1/chat/completions", json=body, headers=headers(rid)) as r:
                assert r.status == 200
                await r.read()
    found = await records(store_url)
    assert sorted(found) == ["plain", "streamed"]
    for record in found.values():
        assert {k: record[k] for k in ("capture", "messages", "response", "tool_calls", "prompt", "parameters",
                                       "max_tokens", "client_ip", "status")} == {
            "capture": "metadata", "messages": None, "response": None, "tool_calls": None, "prompt": None,
            "parameters": {"max_tokens": 5}, "max_tokens": 5, "client_ip": None, "status": 200}
        text = orjson.dumps(record).decode()
        assert "secret" not in text and "alice" not in text and "sim1" not in text


async def test_capture_none_keeps_no_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "never.db"
    async with gateway({"url": str(path), "capture": "none"}, monkeypatch) as (running, _g, _b), \
            aiohttp.ClientSession() as http:
        assert running.gateway.history is None
        async with http.post(running.url + "/v1/chat/completions", json=chat("m1"), headers=headers("x")) as r:
            assert r.status == 200
        async with http.get(running.url + "/admin/history", headers=headers("y")) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (503, "history_unavailable")
    assert not path.exists()


async def test_a_reload_keeps_the_queue(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer belongs to the process: swapping the Runtime (a reload) loses nothing queued."""
    from labgate.runtime import Runtime

    async with gateway({"url": store_url, "flush_interval_s": 30, "batch_size": 1000}, monkeypatch) as (
            running, _good, _bad), aiohttp.ClientSession() as http:
        async with http.post(running.url + "/v1/chat/completions", json=chat("m1"), headers=headers("before")) as r:
            await r.read()
        old = running.gateway.runtime
        running.gateway.runtime = Runtime.build(old.config)
        await old.aclose()
        async with http.post(running.url + "/v1/chat/completions", json=chat("m1"), headers=headers("after")) as r:
            await r.read()
        assert running.gateway.history is not None and running.gateway.history.stats()["queued"] == 2
    assert sorted(await records(store_url)) == ["after", "before"]


async def test_anthropic_surface_requests_are_recorded(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway({"url": store_url}, monkeypatch) as (running, _good, _bad), aiohttp.ClientSession() as http:
        for rid, stream in (("anthropic", False), ("anthropic-stream", True)):
            body = {"model": "m1", "max_tokens": 16, "stream": stream,
                    "messages": [{"role": "user", "content": "Hi from Claude land"}]}
            async with http.post(running.url + "/v1/messages", json=body,
                                 headers={"x-api-key": KEY, "x-request-id": rid}) as r:
                assert r.status == 200
                await r.read()
    found = await records(store_url)
    for rid, stream in (("anthropic", False), ("anthropic-stream", True)):
        record = found[rid]
        assert {k: record[k] for k in ("endpoint", "model", "stream", "status", "outcome", "response", "prompt",
                                       "messages", "max_tokens", "completion_tokens")} == {
            "endpoint": "messages", "model": "m1", "stream": stream, "status": 200, "outcome": "ok",
            "response": SIM8, "prompt": "hi from claude land",
            "messages": [{"role": "user", "content": "Hi from Claude land"}], "max_tokens": 16,
            "completion_tokens": 8}
