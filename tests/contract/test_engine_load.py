"""Routing by an engine's own load: two vLLM deployments whose /metrics (a fake) say how busy they are."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from aiohttp import web

from labgate.routing.engines import EngineLoad
from labgate.server.serve import start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from
from labgate.testing.web import serving

pytestmark = pytest.mark.timeout(60)


class FakeMetrics:
    """A /metrics endpoint per engine whose answer the test sets (``body``), or that hangs or floods."""

    def __init__(self) -> None:
        self.body: dict[str, bytes] = {}
        self.hang = False
        self.url = ""
        self.released = asyncio.Event()  # set at the end: hanging answers finish, so the server stops at once

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.hang:
            await self.released.wait()
        return web.Response(body=self.body.get(request.match_info["engine"], b""), content_type="text/plain")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeMetrics]:
        app = web.Application()
        app.router.add_get("/{engine}/metrics", self.handle)
        async with serving(app) as self.url:
            try:
                yield self
            finally:
                self.released.set()


def metrics(running: int, waiting: int = 0, kv: float = 0.1) -> bytes:
    return (f'vllm:num_requests_running{{model_name="m"}} {running}\n'
            f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\n'
            f'vllm:gpu_cache_usage_perc{{model_name="m"}} {kv}\n').encode()


def vllm(sim: Simulator, fake: FakeMetrics, name: str) -> dict[str, Any]:
    return {"type": "vllm", "base_url": sim.url + "/v1", "models": ["m"], "max_parallel_requests": 16,
            "engine_load": {"url": f"{fake.url}/{name}/metrics", "interval_s": 0.05, "timeout_s": 0.3,
                            "max_bytes": 4096}}


async def fresh(*engines: EngineLoad) -> None:
    """Until every engine has a reading newer than the test's last change (its poller runs every 50 ms)."""
    marks = [e.polls for e in engines]
    for _ in range(500):
        if all(e.polls >= m + 2 for e, m in zip(engines, marks, strict=True)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engines were not polled")


@pytest.mark.asyncio
async def test_least_busy_follows_what_the_engines_report() -> None:
    async with Simulator(Behaviour(), models=["m"]) as a, Simulator(Behaviour(), models=["m"]) as b, \
            FakeMetrics().running() as fake:
        fake.body = {"a": metrics(12, 3), "b": metrics(1)}
        config = config_from({"a": vllm(a, fake, "a"), "b": vllm(b, fake, "b")},
                             {"routing": {"load_balancing": {"m": {"deployments": [{"provider": "a"},
                                                                                   {"provider": "b"}]}}}})
        running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False))
        engines = running.gateway.runtime.table.engines
        try:
            async with httpx2.AsyncClient(timeout=10) as http:
                async def served_by() -> list[str]:
                    out = []
                    for _ in range(10):
                        r = await http.post(running.url + "/v1/chat/completions",
                                            json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
                        out.append(r.headers["x-labgate-provider"])
                    return out
                await served_by()  # the first request starts the pollers
                await fresh(*engines.values())
                assert set(await served_by()) == {"b"}  # a runs 12 + 3 waiting of 16: b goes first
                fake.body = {"a": metrics(0), "b": metrics(2, kv=0.97)}  # b's KV cache is nearly full
                await fresh(*engines.values())
                assert set(await served_by()) == {"a"}
                assert engines["b"].status()["kv_cache_usage"] == 0.97

                # hostile or dead metrics: the load is unknown and routing falls back to in-flight counts
                fake.body = {"a": b"vllm:num_requests_running NaN\n", "b": b"x" * 10_000}  # garbage, too big
                await fresh(*engines.values())
                assert (engines["a"].busy(), engines["b"].busy()) == (None, None)
                assert engines["b"].last_error is not None and engines["a"].errors > 0
                assert set(await served_by()) == {"a", "b"}  # ties rotate again
                fake.hang = True
                await fresh(*engines.values())  # every poll times out after 0.3 s; nothing waits on it
                answers = await served_by()
                assert set(answers) == {"a", "b"}
                assert "timed out" in (engines["a"].last_error or "") or "timeout" in (engines["a"].last_error or "")
        finally:
            fake.hang = False
            fake.released.set()
            await running.stop(grace=2.0)
        assert all(e._task is not None and e._task.done() for e in engines.values())  # stopped with the Runtime
