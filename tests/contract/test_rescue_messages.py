"""Stream rescue for ``/v1/messages`` clients (the official anthropic SDK) and the refusal for tool calls."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import anthropic
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
TOOL = {"name": "search", "description": "Search.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


def provider(sim: Simulator, kind: str) -> dict[str, Any]:
    return {"type": kind, "base_url": sim.url if kind == "anthropic" else sim.url + "/v1", "models": ["m"]}


@contextlib.asynccontextmanager
async def rescuing(first: Behaviour, second: Behaviour, kind: str = "openai_compatible",
                   second_kind: str | None = None) -> AsyncIterator[tuple[RunningGateway, Simulator, io.BytesIO]]:
    async with Simulator(first, models=["m"]) as a, Simulator(second, models=["m"]) as b:
        config = config_from({"a": provider(a, kind), "b": provider(b, second_kind or kind)},
                             {"routing": {"exact_matches": {"m": {"provider": "a", "fallback_chain": ["b"]}}}},
                             {"resilience": {"stream_rescue": True}})
        log = io.BytesIO()
        running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(log))
        try:
            yield running, b, log
        finally:
            await running.stop(grace=2.0)


async def record(running: RunningGateway, log: io.BytesIO) -> dict[str, Any]:
    for _ in range(250):
        running.gateway.runtime.access_log.flush()
        lines = log.getvalue().splitlines()
        if lines:
            return dict(orjson.loads(lines[-1]))
        await asyncio.sleep(0.02)
    raise AssertionError("no record")


def claude(running: RunningGateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=running.url, api_key="x", max_retries=0, timeout=10)


@pytest.mark.asyncio
@pytest.mark.parametrize(("kind", "second_kind"), [("openai_compatible", None), ("anthropic", None),
                                                   ("anthropic", "openai_compatible")])
async def test_a_messages_stream_cut_mid_answer_continues_as_one_message(kind: str, second_kind: str | None) -> None:
    """OpenAI-dialect upstreams (translated for the client), Anthropic ones (passed through, then continued)."""
    async with rescuing(Behaviour(reply=FIRST, fault=CutStream(after=6)), Behaviour(reply=SECOND), kind,
                        second_kind) as (running, b, log):
        async with claude(running).messages.stream(model="m", max_tokens=100, messages=MESSAGES) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        prefill = b.requests[-1].body["messages"][-1]
        partial = prefill["content"] if isinstance(prefill["content"], str) else prefill["content"][0]["text"]
        assert prefill["role"] == "assistant" and FIRST.startswith(partial.rstrip()) and partial
        assert text == partial + SECOND  # the partial, then the continuation: one stream
        assert [block.type for block in final.content] == ["text"]  # one text block, continued at its index
        assert final.content[0].text == text  # type: ignore[union-attr]
        found = await record(running, log)
        assert (found["status"], found["attempts"], found["deployment"], found["rescues"]) == (200, 2, "b/m", 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["openai_compatible", "anthropic"])
async def test_a_half_sent_tool_call_is_not_continued_and_the_anthropic_sdk_raises(kind: str) -> None:
    async with rescuing(Behaviour(fault=CutStream(after=4)), Behaviour(), kind) as (running, b, log):
        with pytest.raises(anthropic.APIError):
            async with claude(running).messages.stream(model="m", max_tokens=100, messages=MESSAGES,
                                                       tools=[TOOL]) as stream:  # type: ignore[list-item]
                async for _ in stream:
                    pass
        assert b.requests == []  # refused: half a tool call cannot be continued from prefill
        found = await record(running, log)
        assert (found["outcome"], found.get("rescues")) == ("stream_error", None)  # logged only when rescued


@pytest.mark.asyncio
async def test_a_half_sent_tool_call_is_not_continued_and_the_openai_sdk_raises() -> None:
    async with rescuing(Behaviour(fault=CutStream(after=3)), Behaviour()) as (running, b, _log):
        client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0, timeout=10)
        tool = {"type": "function", "function": {"name": "search", "parameters": TOOL["input_schema"]}}
        names = []
        with pytest.raises(openai.APIError, match="cut the response short"):
            async for chunk in await client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                                   tools=[tool]):  # type: ignore[list-item]
                for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                    names.append(call.function.name if call.function else None)
        assert "search" in names  # the head of the tool call had reached the client
        assert b.requests == []
