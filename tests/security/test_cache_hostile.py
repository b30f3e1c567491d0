"""Hostile input to the response cache: request controls, admin parameters, admission. Never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.errors import RequestError
from labgate.gateway import Gateway
from labgate.providers.base import Reply, Usage
from labgate.record import RequestRecord
from labgate.runtime import Runtime
from labgate.server.admin_cache import CacheSurface
from labgate.server.http import Request
from labgate.server.serve import RunningGateway, start_gateway
from labgate.state.controls import parse_controls
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from

KEY = "sk-cache-security-0123456789"
CHAT = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
                           | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["no-cache", "no-store", "ttl", "s-maxage", "namespace", "x"]), inner,
                               max_size=4), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=40)), json_values)
def test_controls_either_parse_or_are_a_request_error(header: str | None, field: Any) -> None:
    try:
        asked = parse_controls(header, field)
    except RequestError as exc:
        assert exc.status == 400 and exc.param is not None and exc.param.startswith("cache")
        return
    assert isinstance(asked.no_cache, bool) and isinstance(asked.no_store, bool)
    assert asked.ttl is None or 0 < asked.ttl <= 30 * 24 * 3600
    assert asked.max_age is None or asked.max_age >= 0


@pytest_asyncio.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RunningGateway, aiohttp.ClientSession]]:
    monkeypatch.setenv("LABGATE_CACHE_SECURITY_KEY", KEY)
    async with Simulator(Behaviour(tokens_per_s=0), models=["m"]) as sim, aiohttp.ClientSession() as http:
        config = config_from({"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}},
                             gateway={"auth": {"master_key_env": "LABGATE_CACHE_SECURITY_KEY"},
                                      "cache": {"backend": "memory"}, "store": {"capture": "none"},
                                      "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        yield running, http
        await running.stop(grace=1)


AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["yes", 1, [], {"ttl": "1"}, {"ttl": 1e308}, {"no-cache": 1},
                                   {"s-maxage": -5}, {"ttl": 0}])
async def test_bad_cache_field_gets_an_envelope_in_each_dialect(served: tuple[RunningGateway, aiohttp.ClientSession],
                                                                field: Any) -> None:
    gw, http = served
    raw = orjson.dumps({**CHAT, "cache": field})
    async with http.post(gw.url + "/v1/chat/completions", data=raw, headers=AUTH) as r:
        body = await r.json()
        assert r.status == 400 and r.headers["x-should-retry"] == "false"
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"].startswith("cache")
        assert r.headers["x-request-id"]
    messages = {"model": "m", "max_tokens": 5, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    raw = orjson.dumps({**messages, "cache": field})
    async with http.post(gw.url + "/v1/messages", data=raw, headers=AUTH) as r:
        body = await r.json()
        assert r.status == 400
        assert (body["type"], body["error"]["type"]) == ("error", "invalid_request_error")


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/admin/cache/stats", 401), ("GET", "/admin/cache/keys", 401), ("POST", "/admin/cache/flush", 401),
    ("GET", "/admin/cache/flush", 405)])
async def test_admin_needs_the_master_key(served: tuple[RunningGateway, aiohttp.ClientSession], method: str,
                                          path: str, status: int) -> None:
    gw, http = served
    async with http.request(method, gw.url + path, headers={"authorization": "Bearer wrong"}) as r:
        assert r.status == status
        assert (await r.json())["error"]["message"]
        assert r.headers.get("x-request-id")


@pytest.mark.asyncio
@pytest.mark.parametrize("query", ["namespace=a:b", "namespace=*", "namespace=" + "a" * 65, "pattern=a:b*",
                                   "pattern=%00", "pattern=" + "a" * 65, "limit=0", "limit=-1", "limit=x",
                                   "limit=10001", "limit=99999999999999999999"])
async def test_admin_rejects_bad_parameters(served: tuple[RunningGateway, aiohttp.ClientSession], query: str) -> None:
    gw, http = served
    async with http.get(gw.url + "/admin/cache/keys?" + query, headers=AUTH) as r:
        body = await r.json()
        assert r.status == 400, body
        assert body["error"]["type"] == "invalid_request_error"
    if query.startswith("limit") and query != "limit=10001":  # 10001 keys may be scanned, not listed
        async with http.get(gw.url + "/admin/cache/stats?" + query.replace("limit", "scan_limit"), headers=AUTH) as r:
            assert r.status == 400
    if query.startswith("namespace"):
        async with http.post(gw.url + "/admin/cache/flush?" + query, headers=AUTH) as r:
            assert r.status == 400


@pytest.mark.asyncio
async def test_flush_pattern_never_reaches_other_state(served: tuple[RunningGateway, aiohttp.ClientSession]) -> None:
    gw, http = served
    cache = gw.gateway.runtime.cache
    assert cache is not None
    await cache.entries.put("labgate:limits:key-1", b"7", 60)  # another feature's state under labgate:
    async with http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH) as r:
        assert r.status == 200
    await cache.drain()
    async with http.post(gw.url + "/admin/cache/flush", headers=AUTH) as r:
        assert (await r.json())["deleted"] == 1
    assert await cache.entries.get("labgate:limits:key-1") == b"7"


@pytest.mark.asyncio
async def test_admin_without_master_key_answers_loopback_only() -> None:
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "models": ["m"]}},
                         gateway={"cache": {"backend": "memory"}})
    surface = CacheSurface(Gateway(Runtime.build(config)))
    remote = await surface.stats(Request("GET", "/admin/cache/stats", "", {}, b"", client="10.1.2.3"))
    local = await surface.stats(Request("GET", "/admin/cache/stats", "", {}, b"", client="127.0.0.1"))
    assert (remote.status, local.status) == (403, 200)
    assert orjson.loads(local.body)["backend"]["backend"] == "memory"


@pytest.mark.asyncio
@pytest.mark.parametrize("remembered", [False, True], ids=["parsed", "known-bytes"])
async def test_per_key_entries_are_not_shared_across_keys(remembered: bool) -> None:
    """Per-key entries: another key never gets a key's answer, also when the bytes are known from the other
    key's hit (their remembered key is that key's)."""
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "models": ["m"]}},
                         gateway={"cache": {"backend": "memory", "per_key": True}})
    runtime = Runtime.build(config)
    cache = runtime.cache
    assert cache is not None
    route = runtime.table.resolve("m")
    raw = orjson.dumps(CHAT)

    async def ask(key_id: str) -> str | None:
        record = RequestRecord("r", "chat")
        known = cache.known(record, raw) if remembered else None
        record.key_id, record.body = key_id, raw
        record.payload = parsed = orjson.loads(raw) if known is None else known.parsed  # type: ignore[assignment]
        hit = await cache.get(route, record, record.payload, known=known, parsed=parsed if remembered else None)
        if hit is None and record.cache_ticket is not None:
            record.cache_ticket.result = Reply(f'{{"key":"{key_id}"}}'.encode(), Usage(1, 1), "stop")
            record.finish_reason = "stop"
            cache.store(record)
            await cache.drain()
        return None if hit is None else hit.body.decode()  # type: ignore[union-attr]

    a, b = '{"key":"key-a"}', '{"key":"key-b"}'
    assert [await ask("key-a"), await ask("key-a"), await ask("key-a")] == [None, a, a]
    assert (cache.known(RequestRecord("r", "chat"), raw) is not None) is remembered  # known from key-a's hit
    assert [await ask("key-b"), await ask("key-b"), await ask("key-a")] == [None, b, a]
    await runtime.aclose()


@pytest.mark.asyncio
async def test_a_known_parse_is_never_changed_by_the_requests_sharing_it(
        served: tuple[RunningGateway, aiohttp.ClientSession]) -> None:
    """Requests sending known bytes share one parse: going upstream (refresh, no-store) must not change it."""
    running, http = served
    headers = {"authorization": f"Bearer {KEY}"}
    raw = orjson.dumps({**CHAT, "stream_options": {"include_usage": True}, "user": "u"})
    for extra in ({}, {}, {"cache-control": "no-cache"}, {"cache-control": "no-store, no-cache"}, {}):
        async with http.post(running.url + "/v1/chat/completions", data=raw, headers={**headers, **extra}) as got:
            assert got.status == 200
        assert running.gateway.runtime.cache is not None
        await running.gateway.runtime.cache.drain()
    cache = running.gateway.runtime.cache
    known = cache.known(RequestRecord("r", "chat"), raw)
    assert known is not None and known.parsed == orjson.loads(raw)
