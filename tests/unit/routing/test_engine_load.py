"""An engine's load read in the background (EngineLoad) from a real HTTP endpoint, and what routing makes of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from labgate.config.schema.providers import ProviderConfig
from labgate.routing.engines import EngineLoad, busy, load
from labgate.testing.web import serving

HANG = 10.0  # a wait this long is a hang: the test fails instead of waiting for it


class Engine:
    """An engine's load endpoint: answers ``status``/``body`` and records what it was asked."""

    def __init__(self) -> None:
        self.status, self.body = 200, b""
        self.asked: list[tuple[str, str | None]] = []  # (path with query, authorization)
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.asked.append((request.path_qs, request.headers.get("authorization")))
        return web.Response(status=self.status, body=self.body, content_type="text/plain")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        async with serving(app) as self.url:
            yield self


def provider(kind: str = "vllm", **fields: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({"type": kind, "models": ["m"], **fields})


@contextlib.asynccontextmanager
async def reading(config: ProviderConfig) -> AsyncIterator[EngineLoad]:
    engine = EngineLoad("gpu", config)
    try:
        yield engine
    finally:
        await engine.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize(("kind", "base_url", "options", "url"), [
    ("vllm", "http://gpu:8000/v1", {}, "http://gpu:8000/metrics"),
    ("vllm", "http://gpu:8000/v1/", {}, "http://gpu:8000/metrics"),
    ("llama_cpp", "http://gpu:8080", {}, "http://gpu:8080/slots"),
    ("vllm", "http://gpu:8000/v1", {"url": "http://other:9/m"}, "http://other:9/m"),
    ("vllm", "http://BOX/", {}, "http://BOX/metrics"),  # only slashes are trimmed
])
@pytest.mark.asyncio
async def test_the_default_url_is_the_base_urls_root(kind: str, base_url: str, options: dict[str, Any],
                                                      url: str) -> None:
    async with reading(provider(kind, base_url=base_url, engine_load=options)) as engine:
        assert engine.url == url


@pytest.mark.asyncio
async def test_a_poll_reads_the_metrics_with_the_key_and_reports_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_KEY", "sekrit")
    async with Engine().running() as server:
        server.body = b"vllm:num_requests_running 3\nvllm:num_requests_waiting 2\nvllm:gpu_cache_usage_perc 0.5\n"
        config = provider(api_key_env="GPU_KEY", engine_load={"url": server.url + "/m/metrics?x=1",
                                                              "interval_s": 60, "timeout_s": 2, "max_bytes": 2048})
        async with reading(config) as engine:
            assert (engine.interval, engine.timeout, engine.max_bytes) == (60, 2, 2048)
            assert engine.busy() is None  # nothing read yet (the poller just started)
            assert await engine.poll_once() is True
            assert engine.busy() == 5
            assert server.asked[-1] == ("/m/metrics?x=1", "Bearer sekrit")
            assert engine.status() == {"url": server.url + "/m/metrics?x=1", "running": 3, "waiting": 2,
                                       "kv_cache_usage": 0.5, "slots": None, "fresh": True,
                                       "polls": engine.polls, "errors": 0, "last_error": None}
            assert engine.polls >= 1
            engine.read_at = time.monotonic() - 3 * 60 - 1  # older than three intervals: unknown
            assert (engine.busy(), engine.status()["fresh"]) == (None, False)


@pytest.mark.asyncio
async def test_without_a_key_no_authorization_is_sent_and_slots_are_read_from_slots() -> None:
    async with Engine().running() as server:
        server.body = b'[{"is_processing": true}, {"is_processing": false}]'
        async with reading(provider("llama_cpp", base_url=server.url, engine_load={"interval_s": 60})) as engine:
            assert await engine.poll_once() is True
            assert (engine.running, engine.waiting, engine.kv, engine.slots, engine.busy()) == (1, None, None, 2, 1)
            assert server.asked[-1] == ("/slots", None)


@pytest.mark.asyncio
async def test_a_failed_poll_makes_the_load_unknown_and_says_why() -> None:
    async with Engine().running() as server:
        server.body = b"vllm:num_requests_running 3\n"
        async with reading(provider(base_url=server.url + "/v1", engine_load={"interval_s": 60})) as engine:
            assert await engine.poll_once() is True
            server.status = 500
            assert await engine.poll_once() is False
            assert (engine.running, engine.busy(), engine.errors, engine.last_error) == (None, None, 1, "answered 500")
            server.status, server.body = 200, b"nothing to read"
            assert await engine.poll_once() is False
            assert (engine.errors, engine.last_error) == (2, "no running-requests metric in the answer")
            server.body = b"vllm:num_requests_running 1\n"
            assert await engine.poll_once() is True
            assert (engine.busy(), engine.last_error, engine.errors) == (1, None, 2)


@pytest.mark.asyncio
async def test_reading_the_load_starts_the_poller_and_closing_stops_it() -> None:
    async with Engine().running() as server:
        server.body = b"vllm:num_requests_running 4\n"
        engine = EngineLoad("gpu", provider(base_url=server.url + "/v1", engine_load={"interval_s": 0.05}))
        engine.busy()
        for _ in range(int(HANG / 0.01)):
            if engine.polls >= 2:
                break
            await asyncio.sleep(0.01)
        assert (engine.polls >= 2, engine.busy()) == (True, 4)
        await engine.aclose()
        polls = engine.polls
        await asyncio.sleep(0.15)
        assert engine.polls == polls  # stopped


def seen(count: int | None, *, slots: int | None = None, kv: float | None = None) -> Any:
    return SimpleNamespace(busy=lambda: count, slots=slots, kv=kv)


def test_a_deployments_load_is_the_larger_count_over_its_capacity_and_at_least_its_cache() -> None:
    assert load(seen(None), 3, 4) == 0.75  # unknown: this gateway's own count
    assert load(seen(None), 3, None) == 3.0
    assert load(seen(6), 2, 8) == 0.75  # the engine's 6 of 8
    assert load(seen(1), 2, 8) == 0.25  # this gateway's 2 are more
    assert load(seen(3, slots=4), 0, None) == 0.75  # no limit: the engine's slots
    assert load(seen(1, slots=4, kv=0.9), 0, None) == 0.9  # a fuller cache
    assert load(seen(2, kv=0.5), 0, None) == 2.5  # no capacity at all: a count, the cache breaks ties
    assert load(seen(2), 0, None) == 2


def test_in_flight_on_the_engine_is_the_larger_known_count() -> None:
    assert [busy(None, 2), busy(seen(None), 2), busy(seen(1), 2), busy(seen(5), 2)] == [2, 2, 2, 5]


@pytest.mark.asyncio
async def test_before_any_poll_nothing_is_known() -> None:
    async with reading(provider(base_url="http://127.0.0.1:1/v1", engine_load={})) as engine:
        assert engine.status() == {"url": "http://127.0.0.1:1/metrics", "running": None, "waiting": None,
                                   "kv_cache_usage": None, "slots": None, "fresh": False, "polls": 0, "errors": 0,
                                   "last_error": None}


@pytest.mark.asyncio
async def test_a_reading_is_fresh_for_three_intervals() -> None:
    async with Engine().running() as server:
        server.body = b"vllm:num_requests_running 2\n"
        async with reading(provider(base_url=server.url + "/v1", engine_load={"interval_s": 60})) as engine:
            assert await engine.poll_once() is True
            assert engine.polls == 1
            engine.read_at = time.monotonic() - 10  # 10 s of 180
            assert (engine.busy(), engine.status()["fresh"]) == (2, True)


@pytest.mark.asyncio
async def test_a_url_without_a_path_asks_for_the_root_and_a_trailing_slash_still_means_slots() -> None:
    async with Engine().running() as server:
        server.body = b"vllm:num_requests_running 2\n"
        async with reading(provider(engine_load={"url": server.url, "interval_s": 60})) as engine:
            assert await engine.poll_once() is True
            assert server.asked[-1][0] == "/"
        server.body = b'[{"is_processing": true}]'
        async with reading(provider("llama_cpp", engine_load={"url": server.url + "/slots/"})) as engine:
            assert (await engine.poll_once(), engine.slots) == (True, 1)


@pytest.mark.asyncio
async def test_an_answer_over_max_bytes_is_not_read() -> None:
    async with Engine().running() as server:
        server.body = b"vllm:num_requests_running 2\n" + b"# padding\n" * 300
        async with reading(provider(base_url=server.url + "/v1", engine_load={"max_bytes": 1024})) as engine:
            assert (await engine.poll_once(), engine.running, engine.errors) == (False, None, 1)


@pytest.mark.asyncio
async def test_the_cause_is_logged_once_until_it_changes_and_kept_to_200_characters(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Engine().running() as server:
        async with reading(provider(base_url=server.url + "/v1", engine_load={})) as engine:
            caplog.set_level(logging.INFO, logger="labgate.routing")
            server.status = 503
            for _ in range(3):
                await engine.poll_once()
            server.status, server.body = 200, b"vllm:num_requests_running " + b"9" * 20 + b"x" * 300 + b"\n"
            await engine.poll_once()
            long_error = engine.last_error
        refused = EngineLoad("gpu", provider(base_url=f"http://127.0.0.1:{port}/v1", engine_load={}))
        try:
            await refused.poll_once()
        finally:
            await refused.aclose()
    assert len(long_error or "") == 200 and (long_error or "").startswith("could not convert string to float")
    assert refused.last_error is not None and refused.last_error.startswith(
        "cannot connect to provider 'gpu engine load'")
    assert [r.getMessage() for r in caplog.records] == [
        "engine load of gpu unknown: answered 503", f"engine load of gpu unknown: {long_error}",
        f"engine load of gpu unknown: {refused.last_error}"]
