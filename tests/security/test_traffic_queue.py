"""Hostile traffic against capacity and the queue: bad priorities, floods, clients that vanish.

Every refusal is a well-formed envelope with a request id; the line stays bounded; no slot leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgate.errors import RequestError
from labgate.record import RequestRecord
from labgate.routing.queue import PRIORITIES, Queue
from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.timeout(60)
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
QUEUE = Queue(timeout=1.0, overflow_status=429, retry_after=1.0, default_priority=2, routes={"batch": 3})


@dataclass
class Rig:
    gateway: RunningGateway
    http: httpx2.AsyncClient

    async def chat(self) -> httpx2.Response:
        return await self.http.post(self.gateway.url + "/v1/chat/completions", json={"model": "m", **CHAT})


def provider(sim: Simulator, **extra: Any) -> dict[str, Any]:
    return {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"], **extra}


@contextlib.asynccontextmanager
async def rig(providers: dict[str, Any]) -> AsyncIterator[Rig]:
    running = await start_gateway(config_from(providers), host="127.0.0.1", port=0,
                                  access_log=AccessLog(enabled=False))
    try:
        async with httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_connections=200)) as http:
            yield Rig(running, http)
    finally:
        await running.stop(grace=2.0)


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.002)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=string.printable + "éß\u202e\x00", max_size=200))
def test_any_priority_header_is_a_known_priority_or_a_400_naming_the_header(value: str) -> None:
    record = RequestRecord("req", "chat", model="m")
    record.priority = value
    if value.strip().lower() in PRIORITIES:
        assert QUEUE.priority(record) == PRIORITIES[value.strip().lower()]
        return
    with pytest.raises(RequestError) as raised:
        QUEUE.priority(record)
    assert (raised.value.status, raised.value.param, len(raised.value.message) < 200) == (
        400, "x-labgate-priority", True)


def test_without_a_header_the_route_then_the_default_decides() -> None:
    assert [QUEUE.priority(RequestRecord("r", "chat", model=m)) for m in ("batch", "other", None)] == [3, 2, 2]


@pytest.mark.asyncio
async def test_a_flood_never_grows_the_line_past_max_queue_and_every_refusal_is_an_envelope() -> None:
    async with Simulator(Behaviour(latency_s=0.5), models=["m"]) as sim, \
            rig({"p": provider(sim, max_parallel_requests=2, max_queue=5)}) as r:
        gate = r.gateway.gateway.runtime.table.gates["p"]
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, gate.waiting, len(gate.line) - gate.waiting)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        answers = await asyncio.gather(*(r.chat() for _ in range(60)))
        watcher.cancel()
        ok = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code != 200]
        assert (len(ok), len(refused)) == (7, 53)  # 2 in flight + 5 queued; the rest at once
        assert {(a.status_code, a.headers["retry-after"], orjson.loads(a.content)["error"]["code"],
                 orjson.loads(a.content)["request_id"] == a.headers["x-request-id"]) for a in refused} == {
            (429, "1", "queue_full", True)}
        assert peak <= 5
        assert (gate.inflight, gate.waiting) == (0, 0)


@pytest.mark.asyncio
async def test_clients_that_vanish_while_queued_or_in_flight_leak_no_slot() -> None:
    async with Simulator(Behaviour(latency_s=0.2), models=["m"]) as sim, \
            rig({"p": provider(sim, max_parallel_requests=2)}) as r:
        gate = r.gateway.gateway.runtime.table.gates["p"]
        for _ in range(3):
            tasks = [asyncio.create_task(r.chat()) for _ in range(12)]
            await until(lambda: gate.waiting >= 8)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, httpx2.HTTPError):
                    await task
        await until(lambda: (gate.inflight, gate.waiting) == (0, 0))
        after = await asyncio.gather(*(r.chat() for _ in range(4)))  # full capacity is there again
        assert [a.status_code for a in after] == [200] * 4


@pytest.mark.asyncio
async def test_streams_hold_their_slot_until_they_end_and_give_it_back_however_they_end() -> None:
    async with Simulator(Behaviour(tokens_per_s=50, completion_tokens=10), models=["m"]) as sim, \
            rig({"p": provider(sim, max_parallel_requests=2)}) as r:
        gate = r.gateway.gateway.runtime.table.gates["p"]
        peak = 0

        async def stream(read_all: bool) -> None:
            nonlocal peak
            async with r.http.stream("POST", r.gateway.url + "/v1/chat/completions",
                                     json={"model": "m", **CHAT, "stream": True}) as answer:
                async for _ in answer.aiter_bytes():
                    peak = max(peak, gate.inflight)
                    if not read_all:
                        break  # the client hangs up mid-stream

        await asyncio.gather(*(stream(i % 3 != 0) for i in range(12)))
        await until(lambda: (gate.inflight, gate.waiting) == (0, 0))
        assert peak == 2
