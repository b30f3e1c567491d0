"""``GET /metrics`` on a running gateway: counts of real requests through the simulator, and access."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Behaviour, Simulator, Status
from labgate.testing.gateway import config_from
from labgate.testing.prometheus import Family, parse_metrics

pytestmark = pytest.mark.asyncio
KEY = "sk-metrics-test-0123456789"
KEY_ENV = "LABGATE_METRICS_TEST_KEY"


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(models=["m1", "m2", "flaky"], per_model={"flaky": Behaviour(fault=Status(503))}) as sim:
        yield sim


async def serve(sim: Simulator, monkeypatch: pytest.MonkeyPatch, **gateway: Any) -> RunningGateway:
    monkeypatch.setenv(KEY_ENV, KEY)
    provider = {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1", "m2", "flaky"]}
    config = config_from({"sim": provider}, gateway={"auth": {"master_key_env": KEY_ENV},
                                                     "store": {"capture": "none"}, "logging": {"requests": False},
                                                     **gateway})
    return await start_gateway(config, host="127.0.0.1", port=0)


async def scrape(running: RunningGateway, http: aiohttp.ClientSession, *,
                 key: str | None = None) -> tuple[int, Mapping[str, str], bytes]:
    headers = {"authorization": f"Bearer {key}", "x-request-id": "scrape-1"} if key else {"x-request-id": "scrape-1"}
    async with http.get(running.url + "/metrics", headers=headers) as r:
        return r.status, r.headers.copy(), await r.read()


def counts(family: Family) -> dict[str, float]:
    """Only the ``_count`` samples of a histogram (its times vary from run to run)."""
    return {k: v for k, v in family.samples.items() if k.partition("{")[0].endswith("_count")}


async def test_metrics_count_the_requests_served(sim: Simulator, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    running = await serve(sim, monkeypatch, store={"url": str(tmp_path / "h.db"), "capture": "metadata"})
    auth = {"authorization": f"Bearer {KEY}"}
    try:
        async with aiohttp.ClientSession() as http:
            for model, text, stream, key in [("m1", "Hello world", False, auth), ("m1", "Hello world", True, auth),
                                             ("m2", "one two three", False, auth), ("nope-7f3a", "x", False, auth),
                                             ("flaky", "x", False, auth), ("m1", "x", False, {})]:
                body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
                async with http.post(running.url + "/v1/chat/completions", json=body, headers=key) as r:
                    await r.read()
            deadline = time.monotonic() + 30  # a stream's record is written just after its last byte
            while True:
                status, headers, text = await scrape(running, http)
                families = parse_metrics(text.decode())
                done = (sum(families["labgate_requests_total"].samples.values()) == 6
                        and families["labgate_requests_in_flight"].samples["labgate_requests_in_flight"] == 0)
                if done or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
    finally:
        await running.stop(grace=1.0)

    assert (status, headers["Content-Type"], headers["x-client-request-id"]) == (
        200, "text/plain; version=0.0.4; charset=utf-8", "scrape-1")
    assert families["labgate_requests_total"].samples == {
        'labgate_requests_total{endpoint="chat",model="",provider="",status="401"}': 1,
        'labgate_requests_total{endpoint="chat",model="",provider="",status="404"}': 1,
        'labgate_requests_total{endpoint="chat",model="flaky",provider="sim",status="502"}': 1,
        'labgate_requests_total{endpoint="chat",model="m1",provider="sim",status="200"}': 2,
        'labgate_requests_total{endpoint="chat",model="m2",provider="sim",status="200"}': 1,
    }
    assert counts(families["labgate_request_duration_seconds"]) == {
        'labgate_request_duration_seconds_count{endpoint="chat",model="",provider=""}': 2,
        'labgate_request_duration_seconds_count{endpoint="chat",model="flaky",provider="sim"}': 1,
        'labgate_request_duration_seconds_count{endpoint="chat",model="m1",provider="sim"}': 2,
        'labgate_request_duration_seconds_count{endpoint="chat",model="m2",provider="sim"}': 1,
    }
    assert counts(families["labgate_time_to_first_token_seconds"]) == {
        'labgate_time_to_first_token_seconds_count{model="m1",provider="sim"}': 1}
    # the simulator counts a prompt's words and answers 8 tokens
    assert families["labgate_tokens_total"].samples == {
        'labgate_tokens_total{model="flaky",provider="sim",type="prompt"}': 0,
        'labgate_tokens_total{model="flaky",provider="sim",type="completion"}': 0,
        'labgate_tokens_total{model="m1",provider="sim",type="prompt"}': 4,
        'labgate_tokens_total{model="m1",provider="sim",type="completion"}': 16,
        'labgate_tokens_total{model="m2",provider="sim",type="prompt"}': 3,
        'labgate_tokens_total{model="m2",provider="sim",type="completion"}': 8,
    }
    assert families["labgate_upstream_failures_total"].samples == {
        'labgate_upstream_failures_total{deployment="sim/flaky",error="upstream_server_error"}': 1}
    assert families["labgate_stream_errors_total"].samples == {}
    assert families["labgate_requests_in_flight"].samples == {"labgate_requests_in_flight": 0}
    assert [name for name in families if name.startswith("labgate_history_")] == [
        "labgate_history_written_total", "labgate_history_dropped_total", "labgate_history_rejected_total",
        "labgate_history_write_failures_total", "labgate_history_queued"]


async def test_require_key_asks_for_the_master_key(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    running = await serve(sim, monkeypatch, metrics={"require_key": True})
    try:
        async with aiohttp.ClientSession() as http:
            missing, wrong, right = [await scrape(running, http, key=key) for key in (None, "sk-wrong", KEY)]
    finally:
        await running.stop(grace=1.0)
    assert [status for status, _, _ in (missing, wrong, right)] == [401, 401, 200]
    assert (missing[1]["x-client-request-id"], orjson.loads(missing[2])["error"]["type"]) == (
        "scrape-1", "authentication_error")
    assert "labgate_requests_total" in parse_metrics(right[2].decode())


async def test_disabled_metrics_are_an_unknown_path(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    running = await serve(sim, monkeypatch, metrics={"enabled": False})
    try:
        assert running.gateway.metrics is None  # nothing is counted either
        async with aiohttp.ClientSession() as http:
            status, headers, body = await scrape(running, http, key=KEY)
    finally:
        await running.stop(grace=1.0)
    assert (status, headers["x-client-request-id"]) == (404, "scrape-1")
    assert orjson.loads(body) == {"error": {"message": "No route for GET /metrics.", "type": "invalid_request_error",
                                            "param": None, "code": "not_found"}, "request_id": headers["x-request-id"]}
