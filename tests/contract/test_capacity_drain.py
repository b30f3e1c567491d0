"""SIGTERM under load: unready at once, queued requests 503 with retry-after, in-flight ones complete,
every request in history."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import pytest
from tests.contract.test_capacity import CHAT, provider, until

from labgate.server.serve import start_gateway
from labgate.store import query, store_for
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.timeout(60)


async def history(url: str) -> dict[str, dict[str, Any]]:
    store = store_for(url)
    await store.open()
    try:
        return {r["client_request_id"]: r async for r in query.walk(store, query.Filter())}
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_shutdown_answers_the_queue_with_503_and_lets_in_flight_requests_and_streams_finish(
        tmp_path: Path) -> None:
    store_url = str(tmp_path / "history.db")
    async with Simulator(Behaviour(latency_s=0.4, tokens_per_s=20, completion_tokens=6), models=["m"]) as sim:
        config = config_from({"p": provider(sim, max_parallel_requests=2)}, gateway={
            "server": {"drain_delay_s": 0.3},
            "store": {"url": store_url, "writer": "thread", "flush_interval_s": 0.05}})
        running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False))
        gate = running.gateway.runtime.table.gates["p"]
        async with httpx2.AsyncClient(timeout=20) as http:
            url = running.url + "/v1/chat/completions"

            async def call(rid: str, stream: bool) -> httpx2.Response:
                return await http.post(url, json={"model": "m", **CHAT, "stream": stream},
                                       headers={"x-request-id": rid})

            flying = [asyncio.create_task(call("stream", True)), asyncio.create_task(call("plain", False))]
            await until(lambda: gate.inflight == 2)
            queued = [asyncio.create_task(call(f"queued-{i}", i % 2 == 0)) for i in range(3)]
            await until(lambda: gate.waiting == 3)
            stopping = asyncio.create_task(running.stop(grace=10))
            await until(lambda: running.gateway.draining)
            ready = await http.get(running.url + "/health/readiness")
            refused = await asyncio.gather(*queued)
            done = await asyncio.gather(*flying)
            await stopping
    assert ready.status_code == 503
    assert [(r.status_code, r.headers["retry-after"], r.json()["error"]["code"]) for r in refused] == [
        (503, "1", "shutting_down")] * 3
    assert [r.status_code for r in done] == [200, 200]
    assert done[0].content.endswith(b"data: [DONE]\n\n")
    found = await history(store_url)
    assert {rid: (r["status"], r["outcome"]) for rid, r in found.items()} == {
        "stream": (200, "ok"), "plain": (200, "ok"), "queued-0": (503, "error"), "queued-1": (503, "error"),
        "queued-2": (503, "error")}
