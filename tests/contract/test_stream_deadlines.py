"""Stream deadlines through a real gateway: a time-to-first-token deadline falls back while nothing
was sent; an idle timeout between chunks ends the stream with an error event (or is rescued)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from labgate.config.schema.gateway import ResilienceConfig
from labgate.routing.pace import Pace, Timeouts
from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.timeout(30)
SLOW_START = Behaviour(reply="too late to matter", ttft_s=20)  # the head (role chunk) at once, the token after 20 s
FAST = Behaviour(reply="on time from b")
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def provider(sim: Simulator, kind: str = "openai_compatible") -> dict[str, Any]:
    return {"type": kind, "base_url": sim.url if kind == "anthropic" else sim.url + "/v1", "models": ["m"],
            "timeout_s": 25}


@contextlib.asynccontextmanager
async def chain(first: Behaviour, second: Behaviour, resilience: dict[str, Any], *,
                kind: str = "openai_compatible") -> AsyncIterator[tuple[RunningGateway, Simulator, io.BytesIO]]:
    async with Simulator(first, models=["m"]) as a, Simulator(second, models=["m"]) as b:
        config = config_from({"a": provider(a, kind), "b": provider(b, kind)},
                             {"routing": {"exact_matches": {"m": {"provider": "a", "fallback_chain": ["b"]}}}},
                             {"resilience": resilience})
        log = io.BytesIO()
        running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(log))
        try:
            yield running, b, log
        finally:
            await running.stop(grace=2.0)


async def record(running: RunningGateway, log: io.BytesIO, rid: str) -> dict[str, Any]:
    for _ in range(250):  # a stream's record is written just after its last byte
        running.gateway.runtime.access_log.flush()
        found = [r for line in log.getvalue().splitlines() if (r := orjson.loads(line))["request_id"] == rid]
        if found:
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no record for {rid}")


def sdk(running: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0, timeout=20)


@pytest.mark.asyncio
async def test_a_stream_without_a_token_by_the_deadline_goes_to_the_next_candidate() -> None:
    async with chain(SLOW_START, FAST, {"ttft_timeout_s": 0.3}) as (running, b, log):
        raw = await sdk(running).chat.completions.with_raw_response.create(model="m", messages=MESSAGES,
                                                                           stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
        assert text == "on time from b"  # nothing of a's reached the client (its role chunk was held)
        assert len(b.requests) == 1
        found = await record(running, log, raw.headers["x-request-id"])
        assert (found["status"], found["attempts"], found["deployment"]) == (200, 2, "b/m")
        assert [f["error"] for f in found["failed_attempts"]] == ["first_token_timeout"]
        assert "sent no token within 0.3 s" in found["failed_attempts"][0]["message"]
        assert running.gateway.runtime.table.deployments["a/m"].health.inflight == 0


@pytest.mark.asyncio
async def test_the_route_deadline_overrides_the_global_one() -> None:
    resilience = {"ttft_timeout_s": 60, "routes": {"m": {"ttft_timeout_s": 0.3}}}
    async with chain(SLOW_START, FAST, resilience) as (running, _b, _log):
        chunks = [c async for c in await sdk(running).chat.completions.create(
            model="m", messages=MESSAGES, stream=True)]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "on time from b"


@pytest.mark.asyncio
async def test_when_every_candidate_misses_the_deadline_the_client_gets_a_504() -> None:
    async with chain(SLOW_START, SLOW_START, {"ttft_timeout_s": 0.2}) as (running, _b, _log):
        async with httpx2.AsyncClient(timeout=20) as http:
            answer = await http.post(running.url + "/v1/chat/completions",
                                     json={"model": "m", "messages": MESSAGES, "stream": True})
        assert answer.status_code == 504
        assert answer.json()["error"]["type"] == "timeout_error"
        assert "sent no token within 0.2 s" in answer.json()["error"]["message"]


@pytest.mark.asyncio
async def test_an_anthropic_upstream_that_stalls_before_its_first_token_falls_back() -> None:
    """Known gap closed: message_start used to reach the client at once, so a stall could not fall back."""
    async with chain(SLOW_START, FAST, {"ttft_timeout_s": 0.3}, kind="anthropic") as (running, b, _log):
        client = anthropic.AsyncAnthropic(base_url=running.url, api_key="x", max_retries=0, timeout=20)
        async with client.messages.stream(model="m", max_tokens=50, messages=MESSAGES) as stream:
            text = "".join([t async for t in stream.text_stream])
        assert text == "on time from b"
        assert len(b.requests) == 1


@pytest.mark.asyncio
async def test_a_stream_idle_between_chunks_ends_with_an_error_event_the_sdk_raises() -> None:
    stalls = Behaviour(reply="one two three four", tokens_per_s=1)  # a second between tokens
    async with chain(stalls, FAST, {"stream_idle_timeout_s": 0.3}) as (running, b, log):
        received: list[str] = []
        with pytest.raises(openai.APIError) as raised:
            async for chunk in await sdk(running).chat.completions.create(model="m", messages=MESSAGES,
                                                                          stream=True):
                received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
        assert "".join(received) == "one"  # the first token, then silence
        assert "sent nothing for 0.3 s in the middle of the stream" in raised.value.message
        assert b.requests == []  # bytes were sent: no fallback without rescue
        await asyncio.sleep(0.1)
        running.gateway.runtime.access_log.flush()
        (found,) = [orjson.loads(line) for line in log.getvalue().splitlines()]
        assert (found["outcome"], found["error_type"]) == ("stream_error", "stream_idle_timeout")


@pytest.mark.asyncio
async def test_with_rescue_an_idle_stream_is_continued_on_the_next_deployment() -> None:
    stalls = Behaviour(reply="one two three four", tokens_per_s=1)
    async with chain(stalls, FAST, {"stream_idle_timeout_s": 0.3, "stream_rescue": True}) as (running, b, _):
        chunks = [c async for c in await sdk(running).chat.completions.create(
            model="m", messages=MESSAGES, stream=True)]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one" + "on time from b"
        assert b.requests[-1].body["messages"][-1] == {"role": "assistant", "content": "one"}


def test_route_timeouts_inherit_what_they_leave_out_and_off_is_none() -> None:
    assert Pace.of(ResilienceConfig()) is None
    pace = Pace.of(ResilienceConfig.model_validate(
        {"stream_idle_timeout_s": 5, "routes": {"m": {"ttft_timeout_s": 1}, "n": {"stream_idle_timeout_s": 2}}}))
    assert pace is not None
    assert pace.of_model("m") == Timeouts(first_token=1, idle=5)
    assert pace.of_model("n") == Timeouts(first_token=None, idle=2)
    assert pace.of_model("other") == Timeouts(first_token=None, idle=5)
    only_route = Pace.of(ResilienceConfig.model_validate({"routes": {"m": {"ttft_timeout_s": 1}}}))
    assert only_route is not None and only_route.of_model("x") is None
