"""Provider limits (providers.yaml ``rate_limits`` / ``budget``): an over provider is skipped like a busy one."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Behaviour, Simulator
from labgate.testing.behaviour import Status
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio
PRICED = {"input_per_1m": 1_000_000, "output_per_1m": 2_000_000}  # $1 a prompt token, $2 an answer token


@asynccontextmanager
async def two(tmp_path: Path, first: dict[str, Any], second: dict[str, Any] | None,
              mappings: dict[str, Any] | None = None, **gateway: Any
              ) -> AsyncIterator[tuple[RunningGateway, aiohttp.ClientSession, Simulator, Simulator]]:
    """Providers ``first`` (priority 1) and, unless None, ``second`` (priority 2), both serving model ``m``."""
    async with Simulator(models=["m"]) as a, Simulator(models=["m"]) as b, aiohttp.ClientSession() as http:
        providers = {"first": {"type": "openai_compatible", "base_url": a.url + "/v1", "priority": 1,
                               "models": [{"name": "m", "pricing": PRICED}], **first}}
        if second is not None:
            providers["second"] = {"type": "openai_compatible", "base_url": b.url + "/v1", "priority": 2,
                                   "models": ["m"], **second}
        config = config_from(providers, mappings, gateway={"store": {"url": str(tmp_path / "h.db")},
                                                           "logging": {"requests": False}, **gateway})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            yield running, http, a, b
        finally:
            await running.stop(grace=1.0)


async def post(running: RunningGateway, http: aiohttp.ClientSession, path: str = "/v1/chat/completions",
               **extra: Any) -> tuple[int, Any, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    async with http.post(running.url + path, json=body) as r:
        return r.status, orjson.loads(await r.read()), r.headers


async def test_a_provider_over_its_rpm_hands_over_to_the_next(tmp_path: Path) -> None:
    async with two(tmp_path, {"rate_limits": {"rpm": 2}}, {}) as (running, http, a, b):
        got = [(await post(running, http))[2]["x-labgate-provider"] for _ in range(5)]
        assert got == ["first", "first", "second", "second", "second"]
        assert (len(a.requests), len(b.requests)) == (2, 3)
        # skipped, not broken: the first provider's circuit never heard of it
        rt = running.gateway.runtime
        assert all(d.health.failures == 0 for d in rt.table.resolve("m").groups[0].deployments)


async def test_every_candidate_over_is_a_429_that_never_reaches_an_upstream(tmp_path: Path) -> None:
    async with two(tmp_path, {"rate_limits": {"rpm": 2}}, None) as (running, http, a, _):
        assert [(await post(running, http))[0] for _ in range(2)] == [200, 200]
        status, body, headers = await post(running, http)
        assert (status, body["error"]["type"], body["error"]["code"]) == (429, "rate_limit_error",
                                                                         "rate_limit_exceeded")
        assert "'first'" in body["error"]["message"] and "2 requests per minute" in body["error"]["message"]
        assert int(headers["retry-after"]) >= 1 and headers["x-request-id"] == body["request_id"]
        status, body, headers = await post(running, http, "/v1/messages", max_tokens=5)
        assert (status, body["type"], body["error"]["type"]) == (429, "error", "rate_limit_error")
        assert "retry-after" in headers
        assert len(a.requests) == 2


async def test_a_provider_tpm_is_a_limit_too(tmp_path: Path) -> None:
    # the estimate (prompt bytes / 4 + max_tokens) takes the whole 500; settled to the real count (a few
    # tokens) after, which still leaves no room for another such estimate within the minute
    async with two(tmp_path, {"rate_limits": {"tpm": 500}}, {}) as (running, http, _a, _b):
        got = [(await post(running, http, max_tokens=1000))[2]["x-labgate-provider"] for _ in range(3)]
        assert got[0] == "first" and got[1:] == ["second", "second"]


async def test_a_provider_budget_hands_over_then_refuses_with_insufficient_quota(tmp_path: Path) -> None:
    # each answer costs about $1 × prompt + $2 × 10 tokens: a $50 budget holds one or two of them
    async with two(tmp_path, {"budget": {"limit_usd": 50, "period": "day"}}, {}) as (running, http, a, _b):
        got = [(await post(running, http, max_tokens=10))[2]["x-labgate-provider"] for _ in range(6)]
        assert got[0] == "first" and got[-3:] == ["second"] * 3
        assert len(a.requests) < 3
    (tmp_path / "alone").mkdir()  # a history of its own: the first gateway's spend would be seeded
    async with two(tmp_path / "alone", {"budget": {"limit_usd": 50, "period": "day"}}, None) as (running, http, a, _):
        statuses = [(await post(running, http, max_tokens=10))[0] for _ in range(6)]
        assert statuses[0] == 200 and statuses[-1] == 429
        status, body, headers = await post(running, http, max_tokens=10)
        assert (status, body["error"]["type"], body["error"]["code"]) == (429, "insufficient_quota",
                                                                         "insufficient_quota")
        assert "budget" in body["error"]["message"] and "retry-after" in headers
        assert len(a.requests) == statuses.count(200)


async def test_a_failed_attempt_gives_its_tokens_back(tmp_path: Path) -> None:
    async with two(tmp_path, {"rate_limits": {"tpm": 500}}, {}) as (running, http, a, _b):
        a.set(Behaviour(fault=Status(500)))
        assert (await post(running, http, max_tokens=1000))[2]["x-labgate-provider"] == "second"
        a.set(Behaviour())
        # the failed attempt's estimate (the whole 500) was returned: the first provider has room again
        assert (await post(running, http, max_tokens=1000))[2]["x-labgate-provider"] == "first"
        assert (await post(running, http, max_tokens=1000))[2]["x-labgate-provider"] == "second"


async def test_local_first_sends_to_the_cloud_when_the_local_provider_is_over(tmp_path: Path) -> None:
    async with Simulator(models=["m"]) as local, Simulator(models=["m"]) as cloud, aiohttp.ClientSession() as http:
        providers = {"local": {"type": "ollama", "base_url": local.url, "models": ["m"], "rate_limits": {"rpm": 1}},
                     "cloud": {"type": "openai_compatible", "base_url": cloud.url + "/v1", "models": ["m"]}}
        mappings = {"routing": {"load_balancing": {"m": {
            "strategy": "local_first", "deployments": [{"provider": "local"}, {"provider": "cloud"}]}}}}
        config = config_from(providers, mappings, gateway={"store": {"url": str(tmp_path / "h.db")},
                                                           "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            first = await post(running, http)
            assert (first[2]["x-labgate-provider"], first[2]["x-labgate-routing"]) == ("local", "local")
            second = await post(running, http)
            assert (second[2]["x-labgate-provider"], second[2]["x-labgate-routing"]) == (
                "cloud", "cloud (local over its provider limit)")
            history = running.gateway.history
            assert history is not None
            await history.flush()
            with sqlite3.connect(tmp_path / "h.db") as conn:  # the decision is a history column (migration 7)
                rows = conn.execute("SELECT provider, routing FROM requests ORDER BY id").fetchall()
            assert rows == [("local", "local"), ("cloud", "cloud (local over its provider limit)")]
        finally:
            await running.stop(grace=1.0)


async def test_no_provider_limits_means_no_limiter(tmp_path: Path) -> None:
    async with two(tmp_path, {}, {}) as (running, _, _, _):
        limiter = running.gateway.runtime.limiter  # there for virtual keys, if enabled; no provider in it
        assert limiter is None or limiter.providers == {}  # off means free: the attempt loop skips the check


async def test_a_provider_over_its_limit_falls_back_along_the_chain(tmp_path: Path) -> None:
    async with Simulator(models=["m"]) as a, Simulator(models=["m2"]) as b, aiohttp.ClientSession() as http:
        providers = {"first": {"type": "openai_compatible", "base_url": a.url + "/v1", "models": ["m"],
                               "rate_limits": {"rpm": 1}},
                     "second": {"type": "openai_compatible", "base_url": b.url + "/v1", "models": ["m2"]}}
        config = config_from(providers, {"fallbacks": {"m": ["m2"]}},
                             gateway={"store": {"url": str(tmp_path / "h.db")}, "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            got = [(await post(running, http))[2]["x-labgate-deployment"] for _ in range(3)]
            assert got == ["first/m", "second/m2", "second/m2"]
        finally:
            await running.stop(grace=1.0)


async def test_the_refusal_prefers_a_rate_and_the_soonest_wait() -> None:
    from labgate.errors import BudgetExceededError, ProviderLimitedError, RateLimitedError

    budget = ProviderLimitedError("Budget exhausted for provider 'a'", budget=True, retry_after=3600.0)
    rate = ProviderLimitedError("Rate limit reached for provider 'b'", budget=False, retry_after=2.5)
    slower = ProviderLimitedError("Rate limit reached for provider 'c'", budget=False, retry_after=9.0)
    mixed = ProviderLimitedError.refusal([budget, slower, rate])
    assert isinstance(mixed, RateLimitedError) and mixed.retry_after == 2.5 and "'b'" in mixed.message
    only = ProviderLimitedError.refusal([budget])
    assert isinstance(only, BudgetExceededError) and only.code == "insufficient_quota" and only.retry_after == 3600.0


@pytest.mark.parametrize(("mode", "served_by"), [("open", "first"), ("closed", "second")])
async def test_an_unreachable_backend_follows_on_backend_error(tmp_path: Path, mode: str, served_by: str) -> None:
    pytest.importorskip("redis")
    limits = {"on_backend_error": mode}
    state = {"url": "redis://127.0.0.1:1/0", "timeout_s": 0.2, "retry_s": 60}  # nothing listens on port 1
    async with two(tmp_path, {"rate_limits": {"rpm": 5}}, {}, rate_limits=limits, state=state) as (running, http, _, _):
        status, _, headers = await post(running, http)
        assert (status, headers["x-labgate-provider"]) == (200, served_by)  # closed: passed over, never failed


async def test_a_stream_settles_its_provider_budget_when_it_ends(tmp_path: Path) -> None:
    async with two(tmp_path, {"budget": {"limit_usd": 10_000, "period": "day"}}, {}) as (running, http, _, _):
        body = {"model": "m", "stream": True, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(running.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200 and r.headers["x-labgate-provider"] == "first"
            await r.read()
        history = running.gateway.history
        assert history is not None
        await history.flush()
        with sqlite3.connect(tmp_path / "h.db") as conn:
            (cost,) = conn.execute("SELECT cost FROM requests").fetchone()
        limiter = running.gateway.runtime.limiter
        assert limiter is not None and cost > 0
        values = limiter.counters._values  # type: ignore[attr-defined]
        (spent,) = [v for k, (v, _) in values.items() if ":spend:provider:first:" in k]
        assert spent == pytest.approx(cost)  # the $1000 estimate was replaced by the real cost


async def test_an_attempt_never_sent_gives_its_request_back_too() -> None:
    from labgate.errors import ProviderLimitedError
    from labgate.record import RequestRecord
    from labgate.runtime import Runtime
    from labgate.state.limits import Reservation

    config = config_from({"first": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                    "models": ["m"], "rate_limits": {"rpm": 1}}},
                         gateway={"auth": {"virtual_keys": False}})
    rt = Runtime.build(config)
    try:
        limiter, dep = rt.limiter, rt.table.resolve("m").groups[0].deployments[0]
        assert limiter is not None
        record = RequestRecord("req-1", "chat")
        held = await limiter.take_provider(record, dep)
        assert isinstance(held, Reservation)
        assert isinstance(await limiter.take_provider(record, dep), ProviderLimitedError)  # rpm 1: used
        limiter.give_back(held, sent=False)  # e.g. its half-open probe went to another request
        again = await limiter.take_provider(record, dep)
        assert isinstance(again, Reservation)  # the request came back
        limiter.give_back(again, sent=True)  # sent: the upstream saw it, the request stays counted
        assert isinstance(await limiter.take_provider(record, dep), ProviderLimitedError)
    finally:
        await rt.aclose()


async def test_admin_budgets_lists_a_provider_budget(tmp_path: Path) -> None:
    async with two(tmp_path, {"budget": {"limit_usd": 10_000, "period": "day"}}, {}) as (running, http, _, _):
        status, _, headers = await post(running, http, max_tokens=10)
        assert status == 200
        cost = float(headers["x-labgate-cost"])
        async with http.get(running.url + "/admin/budgets?scope=provider") as r:
            assert r.status == 200
            body = orjson.loads(await r.read())
        (row,) = body["data"]
        assert (row["budget"], row["scope"], row["name"], row["limit_usd"], row["period"]) == (
            "provider:first", "provider", "first", 10_000, "day")
        assert row["used_usd"] == pytest.approx(cost)


async def test_a_provider_passed_over_for_its_limit_uses_none_of_max_attempts(tmp_path: Path) -> None:
    # max_attempts 1: the one attempt goes to the second provider once the first is over its rpm
    # (passed over without being sent); before, the over provider used the only attempt and the client got 429
    async with two(tmp_path, {"rate_limits": {"rpm": 1}}, {}, resilience={"max_attempts": 1}) as (running, http, a, b):
        got = [await post(running, http) for _ in range(3)]
        assert [g[0] for g in got] == [200, 200, 200]
        assert [g[2]["x-labgate-provider"] for g in got] == ["first", "second", "second"]
        assert [g[2]["x-labgate-attempts"] for g in got] == ["1", "1", "1"]
        assert (len(a.requests), len(b.requests)) == (1, 2)
        # the cap still holds for real attempts: the second provider failing is not followed by a third call
        b.set(Behaviour(fault=Status(500)))
        status, _, headers = await post(running, http)
        assert status == 502 and headers["x-labgate-attempts"] == "1"
        assert (len(a.requests), len(b.requests)) == (1, 3)


async def test_a_rescued_stream_settles_each_provider_with_what_it_served(tmp_path: Path) -> None:
    # the first provider's stream is cut after 4 events ("The quick brown"), the second continues it;
    # each provider's budget ends with what it served: the first the prompt and the partial answer at its
    # price, the second the continuation's usage at its own; before, both were settled with the whole cost
    from labgate.state.budgets import window
    from labgate.state.limits import BYTES_PER_TOKEN
    from labgate.testing import CutStream

    cheap = {"input_per_1m": 100_000, "output_per_1m": 300_000}  # $0.1 a prompt token, $0.3 an answer token
    async with two(tmp_path, {"budget": {"limit_usd": 1000, "period": "day"}},
                   {"budget": {"limit_usd": 1000, "period": "day"}, "models": [{"name": "m", "pricing": cheap}]},
                   resilience={"stream_rescue": True},
                   budgets={"limits": [{"scope": "global", "limit_usd": 1000, "period": "day"}]}) as (
            running, http, a, b):
        a.set(Behaviour(reply="The quick brown fox jumps over the lazy dog", fault=CutStream(after=4)))
        b.set(Behaviour(reply="and then it ran away"))
        body = orjson.dumps({"model": "m", "stream": True, "max_tokens": 50,
                             "messages": [{"role": "user", "content": "the fox?"}]})
        async with http.post(running.url + "/v1/chat/completions", data=body) as r:
            text = await r.read()
        assert b"labgate rescued this stream" in text and (len(a.requests), len(b.requests)) == (1, 1)
        limiter = running.gateway.runtime.limiter
        assert limiter is not None
        for _ in range(100):  # the record (and its settlement) is written just after the last byte
            if limiter.counters.value_now(f"{limiter.prefix}spend:global:day:{window('day')[0]}") > 0:
                break
            await asyncio.sleep(0.02)
        await limiter.drain()
        wid = window("day")[0]
        spent = {name: limiter.counters.value_now(f"{limiter.prefix}spend:provider:{name}:day:{wid}")
                 for name in ("first", "second")}
        whole = limiter.counters.value_now(f"{limiter.prefix}spend:global:day:{wid}")  # the record's cost
        prompt = len(body) // BYTES_PER_TOKEN
        served = -(-len(b"The quick brown") // BYTES_PER_TOKEN)
        assert spent["first"] == pytest.approx(prompt * 1.0 + served * 2.0)  # PRICED: $1 in, $2 out
        continued = b.requests[-1].body  # the continuation's prompt held the partial answer (prefill)
        assert continued["messages"][-1] == {"role": "assistant", "content": "The quick brown"}
        # the continuation: the record's usage at its own price
        assert whole > 0 and spent["second"] == pytest.approx(whole)
        assert spent["first"] != pytest.approx(whole)
