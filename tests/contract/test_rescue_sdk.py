"""Stream rescue with the official openai SDK: a stream cut mid-answer continues on the next deployment."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import orjson
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, CutStream, Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.timeout(30)
FIRST = "The quick brown fox jumps over the lazy dog"
SECOND = "and then it ran away"
MESSAGES: list[Any] = [{"role": "user", "content": "tell me about the fox"}]


def provider(sim: Simulator) -> dict[str, Any]:
    return {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}


@contextlib.asynccontextmanager
async def rescuing(first: Behaviour, second: Behaviour, *,
                   rescue: bool = True) -> AsyncIterator[tuple[RunningGateway, Simulator, Simulator, io.BytesIO]]:
    async with Simulator(first, models=["m"]) as a, Simulator(second, models=["m"]) as b:
        config = config_from({"a": provider(a), "b": provider(b)},
                             {"routing": {"exact_matches": {"m": {"provider": "a", "fallback_chain": ["b"]}}}},
                             {"resilience": {"stream_rescue": rescue}})
        log = io.BytesIO()
        running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(log))
        try:
            yield running, a, b, log
        finally:
            await running.stop(grace=2.0)


def records(running: RunningGateway, log: io.BytesIO) -> list[dict[str, Any]]:
    running.gateway.runtime.access_log.flush()
    return [orjson.loads(line) for line in log.getvalue().splitlines()]


async def collect(running: RunningGateway) -> tuple[str, str]:
    client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0, timeout=10)
    stream = await client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream.parse() if chunk.choices])
    return text, stream.headers["x-request-id"]


@pytest.mark.asyncio
async def test_a_stream_cut_after_n_chunks_continues_on_the_next_deployment() -> None:
    async with rescuing(Behaviour(reply=FIRST, fault=CutStream(after=4)), Behaviour(reply=SECOND)) as (
            running, _a, b, log):
        text, rid = await collect(running)
        prefill = b.requests[-1].body["messages"]
        assert prefill == [*MESSAGES, {"role": "assistant", "content": "The quick brown"}]
        assert text == "The quick brown" + SECOND  # the partial, then the continuation as it came
        await asyncio.sleep(0.05)  # the record is written just after the last byte
        (record,) = [r for r in records(running, log) if r["request_id"] == rid]
        assert {k: record[k] for k in ("status", "outcome", "attempts", "deployment", "failed_attempts")} == {
            "status": 200, "outcome": "ok", "attempts": 2, "deployment": "b/m",
            "failed_attempts": [{"deployment": "a/m", "error": "upstream_connection_error",
                                 "message": record["failed_attempts"][0]["message"]}]}
        assert record["failed_attempts"][0]["message"].startswith("provider 'a' cut the response short")
        gates = running.gateway.runtime.table.deployments
        assert (gates["a/m"].health.inflight, gates["b/m"].health.inflight) == (0, 0)


@pytest.mark.asyncio
async def test_a_rescued_stream_ends_with_a_comment_naming_both_deployments() -> None:
    async with rescuing(Behaviour(reply=FIRST, fault=CutStream(after=3)), Behaviour(reply=SECOND)) as (
            running, _, _, _):
        async with httpx2.AsyncClient(timeout=10) as http:
            answer = await http.post(running.url + "/v1/chat/completions",
                                     json={"model": "m", "messages": MESSAGES, "stream": True})
        events = answer.content.split(b"\n\n")
        assert events[-3:] == [b"data: [DONE]", b": labgate rescued this stream: a/m failed mid-answer, "
                                                b"b/m continued it (attempts=2)", b""]


@pytest.mark.asyncio
async def test_a_stream_that_cannot_be_rescued_ends_with_an_error_event_the_sdk_raises() -> None:
    cut = Behaviour(reply=FIRST, fault=CutStream(after=4))
    async with rescuing(cut, cut) as (running, _, b, _log):  # the continuation breaks too
        client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0, timeout=10)
        received = []
        with pytest.raises(openai.APIError) as raised:
            async for chunk in await client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
                received.append(chunk.choices[0].delta.content)
        assert "".join(filter(None, received)) == "The quick brown" + "The quick brown"
        assert raised.value.message.startswith("provider 'b' cut the response short")
        assert len(b.requests) == 1  # one rescue per request


@pytest.mark.asyncio
async def test_without_rescue_a_cut_stream_is_not_continued() -> None:
    async with rescuing(Behaviour(reply=FIRST, fault=CutStream(after=4)), Behaviour(reply=SECOND),
                        rescue=False) as (running, _, b, _):
        with pytest.raises(openai.APIError):
            await collect(running)
        assert b.requests == []
