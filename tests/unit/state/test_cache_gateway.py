"""The cache step in the gateway, end to end over HTTP: a real gateway, the simulator upstream, memory backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from labgate.runtime import Runtime
from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Behaviour, Simulator
from labgate.testing.behaviour import CutStream, Status
from labgate.testing.gateway import config_from

CHAT = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hello"}]}


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return orjson.loads(self.content)


class Env:
    def __init__(self, sim: Simulator, gw: RunningGateway, client: aiohttp.ClientSession) -> None:
        self.sim, self.gw, self.client = sim, gw, client

    async def post(self, body: dict[str, Any], path: str = "/v1/chat/completions",
                   headers: dict[str, str] | None = None) -> Answer:
        async with self.client.post(self.gw.url + path, data=orjson.dumps(body), headers=headers or {}) as got:
            response = Answer(got.status, {k.lower(): v for k, v in got.headers.items()}, await got.read())
        cache = self.gw.gateway.runtime.cache
        if cache is not None:
            await cache.drain()  # the store is written in the background
        return response

    def upstream_calls(self) -> int:
        return sum(1 for r in self.sim.requests if r.method == "POST")


async def _env(cache: dict[str, Any] | None, mappings: dict[str, Any] | None = None,
               behaviour: Behaviour | None = None) -> AsyncIterator[Env]:
    sim = Simulator(behaviour or Behaviour(tokens_per_s=0), models=["m", "n"])
    await sim.start()
    providers = {"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m", "n"]}}
    gateway = {"store": {"capture": "none"}, "logging": {"requests": False}}
    if cache is not None:
        gateway["cache"] = cache
    gw = await start_gateway(config_from(providers, mappings, gateway), host="127.0.0.1", port=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield Env(sim, gw, client)
    await gw.stop(grace=1)
    await sim.stop()


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    async for e in _env({"backend": "memory"}):
        yield e


@pytest.mark.asyncio
async def test_miss_then_hit_same_body_one_upstream_call(env: Env) -> None:
    miss = await env.post(CHAT)
    hit = await env.post(CHAT)
    assert (miss.status_code, hit.status_code) == (200, 200)
    assert miss.headers["x-labgate-cache"] == "miss" and "age" not in miss.headers
    assert hit.headers["x-labgate-cache"] == "hit" and hit.headers["age"] == "0"
    assert hit.content == miss.content
    assert env.upstream_calls() == 1


@pytest.mark.asyncio
async def test_stream_and_whole_share_one_entry(env: Env) -> None:
    streamed = await env.post({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.headers["x-labgate-cache"] == "miss"
    whole = await env.post(CHAT)
    assert whole.headers["x-labgate-cache"] == "hit"
    replayed = await env.post({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert replayed.headers["x-labgate-cache"] == "hit"
    assert env.upstream_calls() == 1
    assert _stream_text(replayed.content) == _stream_text(streamed.content) == \
        orjson.loads(whole.content)["choices"][0]["message"]["content"]
    assert _stream_usage(replayed.content) == _stream_usage(streamed.content) == orjson.loads(whole.content)["usage"]
    assert replayed.content.endswith(b"data: [DONE]\n\n")


def _stream_events(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]


def _stream_text(body: bytes) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in _stream_events(body) if c["choices"])


def _stream_usage(body: bytes) -> dict[str, Any]:
    [usage] = [c["usage"] for c in _stream_events(body) if c.get("usage")]
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


@pytest.mark.asyncio
async def test_fields_that_cannot_change_the_answer_share_the_entry(env: Env) -> None:
    await env.post(CHAT)
    hit = await env.post({"user": "someone", "messages": CHAT["messages"], "temperature": 0.0, "model": "m",
                          "cache": {"ttl": 60}})
    assert hit.headers["x-labgate-cache"] == "hit"
    other = await env.post({**CHAT, "max_tokens": 5})
    assert other.headers["x-labgate-cache"] == "miss"
    assert env.upstream_calls() == 2
    assert all("cache" not in (r.body or {}) for r in env.sim.requests)  # never sent upstream


@pytest.mark.asyncio
async def test_huge_numbers_in_the_body_are_cached_not_a_500(env: Env) -> None:
    raw = b'{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"x":99999999999999999999999}'
    async with env.client.post(env.gw.url + "/v1/chat/completions", data=raw) as got:
        assert (got.status, got.headers["x-labgate-cache"]) == (200, "miss")


@pytest.mark.asyncio
async def test_nondeterministic_request_is_bypassed_by_default(env: Env) -> None:
    body = {**CHAT, "temperature": 0.7}
    first, second = await env.post(body), await env.post(body)
    assert (first.headers["x-labgate-cache"], second.headers["x-labgate-cache"]) == ("bypass", "bypass")
    assert env.upstream_calls() == 2


@pytest.mark.asyncio
async def test_no_cache_refreshes_and_no_store_does_not_store(env: Env) -> None:
    assert (await env.post(CHAT, headers={"cache-control": "no-store"})).headers["x-labgate-cache"] == "miss"
    assert (await env.post(CHAT)).headers["x-labgate-cache"] == "miss"  # nothing was stored
    assert (await env.post(CHAT)).headers["x-labgate-cache"] == "hit"
    refreshed = await env.post({**CHAT, "cache": {"no-cache": True}})
    assert refreshed.headers["x-labgate-cache"] == "bypass"
    assert env.upstream_calls() == 3


@pytest.mark.asyncio
async def test_bad_cache_field_is_a_400_envelope(env: Env) -> None:
    response = await env.post({**CHAT, "cache": {"ttl": -1}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == ("cache.ttl", "invalid_request_error")
    assert response.headers["x-request-id"]
    response = await env.post({**CHAT, "cache": "yes"})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "cache")


@pytest.mark.asyncio
async def test_truncated_stream_is_never_stored() -> None:
    async for env in _env({"backend": "memory"}, behaviour=Behaviour(tokens_per_s=0, fault=CutStream(after=2))):
        streamed = await env.post({**CHAT, "stream": True})
        assert b"error" in streamed.content
        env.sim.set(replace(env.sim.behaviour, fault=None))
        again = await env.post(CHAT)
        assert again.headers["x-labgate-cache"] == "miss"
        assert env.upstream_calls() == 2


@pytest.mark.asyncio
async def test_single_flight_50_identical_requests_make_one_upstream_call() -> None:
    async for env in _env({"backend": "memory"}, behaviour=Behaviour(latency_s=0.3, tokens_per_s=0)):
        responses = await asyncio.gather(*(env.post(CHAT if i % 2 else {**CHAT, "stream": True})
                                           for i in range(50)))
        assert [r.status_code for r in responses] == [200] * 50
        assert env.upstream_calls() == 1
        statuses = sorted(r.headers["x-labgate-cache"] for r in responses)
        assert statuses == ["hit"] * 49 + ["miss"]


@pytest.mark.asyncio
async def test_no_cache_section_means_no_header_and_no_cache() -> None:
    async for env in _env(None):
        first, second = await env.post(CHAT), await env.post(CHAT)
        assert "x-labgate-cache" not in first.headers and "x-labgate-cache" not in second.headers
        assert env.gw.gateway.runtime.cache is None
        assert env.upstream_calls() == 2


@pytest.mark.asyncio
async def test_route_options_namespace_ttl_and_off() -> None:
    mappings = {"routing": {"cache": {"n": {"enabled": False}, "m*": {"namespace": "mm", "ttl_s": 0.2}}}}
    async for env in _env({"backend": "memory"}, mappings):
        assert (await env.post({**CHAT, "model": "n"})).headers["x-labgate-cache"] == "off"
        assert (await env.post(CHAT)).headers["x-labgate-cache"] == "miss"
        assert (await env.post(CHAT)).headers["x-labgate-cache"] == "hit"
        keys = await env.gw.gateway.runtime.cache.entries.keys("labgate:mm:*", limit=10)  # type: ignore[union-attr]
        assert len(keys) == 1 and keys[0].key.startswith("labgate:mm:")
        await asyncio.sleep(0.25)
        assert (await env.post(CHAT)).headers["x-labgate-cache"] == "miss"  # expired


@pytest.mark.asyncio
async def test_single_flight_leader_failure_hands_over_to_one_waiter() -> None:
    behaviour = Behaviour(latency_s=0.2, tokens_per_s=0, fault=Status(500), fail_first_n=1)
    async for env in _env({"backend": "memory"}, behaviour=behaviour):
        responses = await asyncio.gather(*(env.post(CHAT) for _ in range(6)))
        assert sorted(r.status_code for r in responses) == [200] * 5 + [502]
        assert env.upstream_calls() == 2  # the failed leader, then one waiter that took over
        assert sorted(r.headers["x-labgate-cache"] for r in responses) == ["hit"] * 4 + ["miss"] * 2


@pytest.mark.asyncio
async def test_single_flight_wait_is_bounded() -> None:
    cache = {"backend": "memory", "single_flight_wait_s": 0.1}
    async for env in _env(cache, behaviour=Behaviour(latency_s=0.4, tokens_per_s=0)):
        started = asyncio.get_running_loop().time()
        first, second = await asyncio.gather(env.post(CHAT), env.post(CHAT))
        assert (first.status_code, second.status_code) == (200, 200)
        assert env.upstream_calls() == 2  # the waiter gave up after 0.1 s and went upstream itself
        assert asyncio.get_running_loop().time() - started < 0.8


@pytest.mark.asyncio
async def test_single_flight_off_sends_every_miss_upstream() -> None:
    async for env in _env({"backend": "memory", "single_flight": False},
                          behaviour=Behaviour(latency_s=0.2, tokens_per_s=0)):
        await asyncio.gather(*(env.post(CHAT) for _ in range(3)))
        assert env.upstream_calls() == 3


@pytest.mark.asyncio
async def test_a_stream_longer_than_an_entry_is_not_stored() -> None:
    cache = {"backend": "memory", "max_entry_bytes": 256}
    async for env in _env(cache, behaviour=Behaviour(tokens_per_s=0, completion_tokens=400)):
        streamed = await env.post({**CHAT, "stream": True})
        assert streamed.status_code == 200 and streamed.content.endswith(b"data: [DONE]\n\n")
        assert (await env.post(CHAT)).headers["x-labgate-cache"] == "miss"  # nothing stored
        assert (await env.post(CHAT)).headers["x-labgate-cache"] == "miss"  # the whole answer is too big too
        assert env.upstream_calls() == 3


@pytest.mark.asyncio
async def test_reload_keeps_the_entries_and_counts() -> None:
    async for env in _env({"backend": "memory"}):
        await env.post(CHAT)
        old = env.gw.gateway.runtime
        new = Runtime.build(old.config, previous=old)
        env.gw.gateway.runtime = new
        await old.aclose()
        assert (await env.post(CHAT)).headers["x-labgate-cache"] == "hit"
        assert new.cache is not None and new.cache.counts["default"].hits == 1
        assert env.upstream_calls() == 1


@pytest.mark.asyncio
async def test_embeddings_are_cached_whatever_the_temperature(env: Env) -> None:
    body = {"model": "m", "input": ["a", "b"]}
    miss = await env.post(body, "/v1/embeddings")
    hit = await env.post(body, "/v1/embeddings")
    assert (miss.headers["x-labgate-cache"], hit.headers["x-labgate-cache"]) == ("miss", "hit")
    assert hit.content == miss.content
    assert env.upstream_calls() == 1


@pytest.mark.asyncio
async def test_hits_go_to_metrics_as_saved_tokens_not_used_ones(env: Env) -> None:
    await env.post(CHAT)
    await env.post(CHAT)
    async with env.client.get(env.gw.url + "/metrics") as got:
        text = await got.text()
    usage = orjson.loads((await env.post(CHAT)).content)["usage"]
    assert 'labgate_cache_requests_total{result="hit"} 1' in text
    assert 'labgate_cache_requests_total{result="miss"} 1' in text
    assert f'labgate_cache_saved_tokens_total{{type="completion"}} {usage["completion_tokens"]}' in text
    assert (f'labgate_tokens_total{{model="m",provider="p",type="completion"}} {usage["completion_tokens"]}'
            in text)  # counted once: the miss


@pytest.mark.asyncio
async def test_repeated_queries_workload_hit_rate(env: Env) -> None:
    """The seeds' Workflow 3 target (>70% hits on repeated queries), read back from /admin/cache/stats."""
    prompts = [f"question {i}" for i in range(5)]
    for _ in range(4):
        for prompt in prompts:
            await env.post({**CHAT, "messages": [{"role": "user", "content": prompt}]})
    async with env.client.get(env.gw.url + "/admin/cache/stats") as got:
        stats = await got.json()
    default = stats["namespaces"]["default"]
    assert (default["entries"], default["hits"], default["misses"], default["hit_rate"]) == (5, 15, 5, 0.75)
    assert stats["total"]["hit_rate"] == 0.75 > 0.7
    assert env.upstream_calls() == 5


@pytest.mark.asyncio
async def test_memory_hits_reuse_the_decoded_entry_until_it_is_replaced(env: Env,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from labgate.state import cache as cache_module
    from labgate.state.entry import Entry

    decodes: list[bytes] = []
    real = Entry.decode.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Entry], raw: bytes) -> Entry | None:
        decodes.append(raw)
        return real(cls, raw)

    monkeypatch.setattr(Entry, "decode", classmethod(counting))
    miss = await env.post(CHAT)
    hits = [await env.post(CHAT) for _ in range(3)]
    assert all(h.headers["x-labgate-cache"] == "hit" and h.content == miss.content for h in hits)
    assert len(decodes) == 1  # decoded on the first hit only: the memory backend hands back the same bytes
    await env.post({**CHAT, "cache": {"no-cache": True}})  # refreshed: a new value under the same key
    again = await env.post(CHAT)
    assert again.headers["x-labgate-cache"] == "hit" and len(decodes) == 2  # the new value is decoded afresh
    cache = env.gw.gateway.runtime.cache
    assert cache is not None and cache._decoded is not None
    raw = decodes[-1]
    for i in range(cache_module.DECODED_LIMIT * 2):  # many keys: the decoded entries stay bounded
        cache._decode(f"k{i}", raw)
    assert len(cache._decoded) == cache_module.DECODED_LIMIT


@pytest.mark.asyncio
async def test_identical_request_bytes_reuse_the_key_hash(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from labgate.state import cache as cache_module

    hashed: list[dict[str, Any]] = []
    real = cache_module.key_hash

    def counting(endpoint: str, target: str, body: dict[str, Any]) -> str:
        hashed.append(dict(body))
        return real(endpoint, target, body)

    monkeypatch.setattr(cache_module, "key_hash", counting)
    miss = await env.post(CHAT)
    hit = await env.post(CHAT)
    assert hit.headers["x-labgate-cache"] == "hit" and hit.content == miss.content and len(hashed) == 1
    other = await env.post({**CHAT, "messages": [{"role": "user", "content": "bye"}]})  # other bytes: hashed
    assert other.headers["x-labgate-cache"] == "miss" and len(hashed) == 2
    spaced = await env.client.post(env.gw.url + "/v1/chat/completions", data=orjson.dumps(CHAT) + b" ")
    async with spaced as got:  # the same body in other bytes: hashed again, and the same entry
        assert got.headers["x-labgate-cache"] == "hit" and await got.read() == miss.content
    assert len(hashed) == 3
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * cache_module.HASHED_BODY_BYTES}]}
    await env.post(big)
    await env.post(big)
    assert len(hashed) == 5  # past HASHED_BODY_BYTES a body's hash is not remembered
    cache = env.gw.gateway.runtime.cache
    assert cache is not None
    for i in range(cache_module.HASHED_LIMIT * 2):  # many bodies: the remembered hashes stay bounded
        await env.post({**CHAT, "seed": i}, headers={"cache-control": "no-store"})
    assert len(cache._hashed) == cache_module.HASHED_LIMIT


@pytest.mark.asyncio
async def test_streamed_hits_replay_the_stored_answer_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed hit sends the stream rendered on the entry's first streamed hit: not parsed and replayed again."""
    from labgate.state import cache as cache_module

    replays: list[bool] = []
    real = cache_module.replay

    def counting(doc: dict[str, Any], *, dialect: str, endpoint: str, include_usage: bool) -> list[bytes]:
        replays.append(include_usage)
        return real(doc, dialect=dialect, endpoint=endpoint, include_usage=include_usage)

    monkeypatch.setattr(cache_module, "replay", counting)
    streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    miss = await env.post(streamed)
    hits = [await env.post(streamed) for _ in range(3)]
    assert all(h.headers["x-labgate-cache"] == "hit" for h in hits)
    assert hits[0].content == hits[1].content == hits[2].content  # the same bytes every time
    assert _stream_text(hits[0].content) == _stream_text(miss.content)
    assert _stream_usage(hits[0].content) == _stream_usage(miss.content)
    assert replays == [True]  # rendered on the first streamed hit only
    plain = [await env.post({**CHAT, "stream": True}) for _ in range(2)]  # no usage asked: its own rendering
    assert replays == [True, False] and plain[0].content == plain[1].content
    assert not any(e.get("usage") for e in _stream_events(plain[0].content))
    # every hit is still recorded: counted by the cache and the metrics as a hit
    cache = env.gw.gateway.runtime.cache
    assert cache is not None and cache.counts[cache.default.namespace].hits == 5


@pytest.mark.asyncio
async def test_a_memory_hit_reads_the_backend_without_its_coroutine(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from labgate.state.memory import MemoryEntries

    miss = await env.post(CHAT)

    async def never(self: MemoryEntries, key: str) -> bytes | None:
        raise AssertionError("the hit path awaited MemoryEntries.get")

    monkeypatch.setattr(MemoryEntries, "get", never)
    hit = await env.post(CHAT)
    assert hit.headers["x-labgate-cache"] == "hit" and hit.content == miss.content
    other = await env.post({**CHAT, "seed": 1})  # a miss takes the same path
    assert other.headers["x-labgate-cache"] == "miss"


@pytest.mark.asyncio
async def test_a_backend_handing_back_equal_bytes_reuses_the_decoded_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis hands back new bytes on each get: equal bytes reuse the decoded entry (and its rendered stream)."""
    from labgate.config.schema.cache import CacheConfig
    from labgate.state.cache import Cache
    from labgate.state.entry import Entry

    class Copying:
        backend = "copying"

        def __init__(self) -> None:
            self.values: dict[str, bytes] = {}

        async def get(self, key: str) -> bytes | None:
            value = self.values.get(key)
            return None if value is None else bytes(bytearray(value))  # a fresh object, like a network read

        async def put(self, key: str, value: bytes, ttl_s: float) -> None:
            self.values[key] = value

        async def aclose(self) -> None:
            pass

    decodes: list[bytes] = []
    real = Entry.decode.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Entry, "decode", classmethod(lambda cls, raw: decodes.append(raw) or real(cls, raw)))
    store = Copying()
    cache = Cache(CacheConfig(), {}, store)  # type: ignore[arg-type]
    entry = Entry(b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
                  b'"content":"hi"},"finish_reason":"stop"}]}', "openai", "chat", 1.0, "stop", None, "p", "p/m")
    store.values["k"] = entry.encode()
    for _ in range(3):
        assert await cache.entries.get("k") is not store.values["k"]
        found = cache._decode("k", await cache.entries.get("k"))
        assert found is not None and found.body == entry.body
    assert len(decodes) == 1
    store.values["k"] = Entry(entry.body, "openai", "chat", 2.0, "stop", None, "p", "p/m").encode()  # re-stored
    assert cache._decode("k", await cache.entries.get("k")) is not found and len(decodes) == 2


@pytest.mark.asyncio
async def test_request_bytes_answered_from_the_cache_are_not_parsed_again(env: Env,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the same bytes were a hit, later requests sending them reuse that parse (and key): still whole
    requests for every record (cache counts, metrics, access log), with the same answer."""
    from labgate.server import openai

    parsed: list[bytes] = []
    real = openai.parse_chat
    monkeypatch.setattr(openai, "parse_chat", lambda body: parsed.append(body) or real(body))
    miss = await env.post(CHAT)
    hits = [await env.post(CHAT) for _ in range(3)]
    assert [h.headers["x-labgate-cache"] for h in hits] == ["hit"] * 3
    assert all(h.content == miss.content for h in hits)
    assert len(parsed) == 2  # the miss and the first hit; then the bytes are known
    other = await env.post({**CHAT, "seed": 7})  # other bytes: parsed
    assert other.headers["x-labgate-cache"] == "miss" and len(parsed) == 3
    cache = env.gw.gateway.runtime.cache
    metrics = env.gw.gateway.metrics
    assert cache is not None and metrics is not None
    assert (cache.counts["default"].hits, cache.counts["default"].misses) == (3, 2)
    assert metrics._cache["hit"] == 3
    # controls still apply to known bytes: no-cache skips the lookup and refreshes, no-store keeps nothing
    refreshed = await env.post(CHAT, headers={"cache-control": "no-cache"})
    assert refreshed.headers["x-labgate-cache"] == "bypass" and env.upstream_calls() == 3
    assert (await env.post(CHAT, headers={"cache-control": "max-age=0"})).headers["x-labgate-cache"] in ("hit", "miss")
    assert len(parsed) == 3
    # an entry gone from the backend: the known bytes miss, go upstream with the same body, and are stored again
    await cache.entries.delete("labgate:*")
    gone = await env.post(CHAT)
    assert gone.headers["x-labgate-cache"] == "miss" and env.upstream_calls() == 5
    assert env.sim.requests[-1].body == {**CHAT, "model": "m"}
    assert (await env.post(CHAT)).headers["x-labgate-cache"] == "hit" and len(parsed) == 3


@pytest.mark.asyncio
async def test_known_bytes_are_per_endpoint_and_bounded(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from labgate.state import cache as cache_module

    await env.post(CHAT)
    assert (await env.post(CHAT)).headers["x-labgate-cache"] == "hit"  # CHAT's bytes are known for chat
    elsewhere = await env.post(CHAT, "/v1/completions")  # the same bytes on another endpoint: its own parse
    assert elsewhere.status_code == 400 and elsewhere.json()["error"]["param"] == "prompt"
    with_field = {**CHAT, "cache": {"ttl": 60}}  # a body's own cache field is read afresh: never known
    for _ in range(3):
        assert (await env.post(with_field)).headers["x-labgate-cache"] == "hit"
    cache = env.gw.gateway.runtime.cache
    assert cache is not None
    assert [orjson.loads(raw) for raw in cache._known] == [CHAT]
    monkeypatch.setattr(cache_module, "KNOWN_LIMIT", 4)
    for i in range(6):  # each body twice: a miss, then a hit that remembers it
        await env.post({**CHAT, "seed": i})
        await env.post({**CHAT, "seed": i})
    assert [orjson.loads(raw).get("seed") for raw in cache._known] == [2, 3, 4, 5]  # the oldest went first


@pytest.mark.asyncio
async def test_known_bytes_are_not_used_with_experiments(monkeypatch: pytest.MonkeyPatch) -> None:
    """An experiment may change a request's model or body before the lookup: its parse is never shared."""
    from labgate.server import openai

    parsed: list[bytes] = []
    real = openai.parse_chat
    monkeypatch.setattr(openai, "parse_chat", lambda body: parsed.append(body) or real(body))
    sim = Simulator(Behaviour(tokens_per_s=0), models=["m", "n"])
    await sim.start()
    providers = {"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m", "n"]}}
    experiment = {"name": "e", "model": ["m"], "status": "running",
                  "variants": [{"name": "a", "model": "m"}, {"name": "b", "model": "m"}]}
    gw = await start_gateway(config_from(providers, None, {"store": {"capture": "none"}, "cache": {"backend": "memory"},
                                                           "logging": {"requests": False}}, experiments=[experiment]),
                             host="127.0.0.1", port=0)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
            env = Env(sim, gw, client)
            statuses = [(await env.post(CHAT)).headers["x-labgate-cache"] for _ in range(6)]
        assert statuses == ["miss"] + ["hit"] * 5 and len(parsed) == 6
        assert gw.gateway.runtime.cache is not None and not gw.gateway.runtime.cache._known
    finally:
        await gw.stop(grace=1)
        await sim.stop()
