"""The provider simulator, driven by the official SDKs and by raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import subprocess
import sys
import time
from array import array
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from unittest.mock import ANY

import aiohttp
import anthropic
import httpx2
import openai
import orjson
import pytest

from labgate.testing import (
    Behaviour,
    CutStream,
    Disconnect,
    Hang,
    NotJSON,
    RateLimit,
    Received,
    Simulator,
    Status,
    embedding,
    embedding_base64,
    sim_text,
)

pytestmark = pytest.mark.timeout(10)

USER = [{"role": "user", "content": "find some cats"}]  # 3 prompt tokens
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("search", "lookup", "fetch")
]
CLAUDE_TOOLS = [{"name": name, "input_schema": {"type": "object"}} for name in ("search", "lookup")]


def oai(sim: Simulator, **options: Any) -> openai.AsyncOpenAI:
    settings = {"api_key": "sk-test", "max_retries": 0, "timeout": 5, **options}
    return openai.AsyncOpenAI(base_url=sim.url + "/v1", **settings)


def claude(sim: Simulator, **options: Any) -> anthropic.AsyncAnthropic:
    settings = {"api_key": "sk-ant", "max_retries": 0, "timeout": 5, **options}
    return anthropic.AsyncAnthropic(base_url=sim.url, **settings)


@asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        yield http


async def post(sim: Simulator, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with session() as http, http.post(sim.url + path, json=body, headers=headers) as response:
        return response.status, await response.read()


def events(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of each SSE event; ``[DONE]`` stays a string."""
    parsed = []
    for block in raw.decode().split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = fields["data"]
        parsed.append((fields.get("event"), data if data == "[DONE]" else json.loads(data)))
    return parsed


def chunk_dump(chunk: Any) -> dict[str, Any]:
    return chunk.model_dump(exclude_none=True, exclude={"created"})


# --- OpenAI chat ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_chat_body_on_the_wire() -> None:
    async with Simulator(Behaviour(completion_tokens=3), models=["m"]) as sim:
        status, raw = await post(sim, "/v1/chat/completions", {"model": "m", "messages": USER})
    assert status == 200
    assert orjson.loads(raw) == {
        "id": "chatcmpl-sim1",
        "object": "chat.completion",
        "created": ANY,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " sim1 sim2 sim3"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }


@pytest.mark.asyncio
async def test_chat_with_the_sdk_counts_all_message_text() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]},
    ]
    async with Simulator() as sim, oai(sim) as client:
        reply = await client.chat.completions.create(model="any", messages=messages)
    assert reply.choices[0].message.content == sim_text(8)
    assert reply.usage is not None
    assert reply.usage.model_dump(exclude_none=True) == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}


@pytest.mark.asyncio
async def test_chat_stream_with_the_sdk() -> None:
    async with Simulator(Behaviour(completion_tokens=2)) as sim, oai(sim) as client:
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        chunks = [chunk_dump(chunk) async for chunk in stream]
    head = {"id": "chatcmpl-sim1", "object": "chat.completion.chunk", "model": "m"}
    assert chunks == [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": " sim1"}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": " sim2"}}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]


@pytest.mark.asyncio
async def test_chat_stream_with_usage_on_the_wire() -> None:
    body = {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    async with Simulator(Behaviour(completion_tokens=1)) as sim:
        status, raw = await post(sim, "/v1/chat/completions", body)
    head = {"id": "chatcmpl-sim1", "object": "chat.completion.chunk", "created": ANY, "model": "m"}

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    assert status == 200
    assert events(raw) == [
        (None, {**head, "choices": choice({"role": "assistant", "content": ""}), "usage": None}),
        (None, {**head, "choices": choice({"content": " sim1"}), "usage": None}),
        (None, {**head, "choices": choice({}, "stop"), "usage": None}),
        (None, {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}),
        (None, "[DONE]"),
    ]


@pytest.mark.asyncio
async def test_max_tokens_stop_and_json_mode() -> None:
    async with Simulator(Behaviour(completion_tokens=4)) as sim, oai(sim) as client:
        capped = await client.chat.completions.create(model="m", messages=USER, max_completion_tokens=2)
        legacy_cap = await client.chat.completions.create(model="m", messages=USER, max_tokens=3)
        stopped = await client.chat.completions.create(model="m", messages=USER, stop=["sim3"])
        as_json = await client.chat.completions.create(
            model="m", messages=USER, response_format={"type": "json_object"}
        )
    assert (capped.choices[0].message.content, capped.choices[0].finish_reason) == (" sim1 sim2", "length")
    assert (legacy_cap.choices[0].message.content, legacy_cap.choices[0].finish_reason) == (sim_text(3), "length")
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == (" sim1 sim2 ", "stop")
    assert stopped.usage is not None and stopped.usage.completion_tokens == 3
    assert json.loads(as_json.choices[0].message.content or "") == {"reply": "sim1 sim2 sim3 sim4"}
    assert as_json.usage is not None and as_json.usage.completion_tokens == 4


@pytest.mark.asyncio
async def test_fixed_reply_text() -> None:
    async with Simulator(Behaviour(reply="Hello there, world")) as sim, oai(sim) as client:
        whole = await client.chat.completions.create(model="m", messages=USER)
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        deltas = [chunk.choices[0].delta.content async for chunk in stream]
    assert whole.choices[0].message.content == "Hello there, world"
    assert whole.usage is not None and whole.usage.completion_tokens == 3
    assert deltas == ["", "Hello", " there,", " world", None]


# --- tools ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tool_call_non_stream() -> None:
    async with Simulator() as sim, oai(sim) as client:
        reply = await client.chat.completions.create(model="m", messages=USER, tools=TOOLS)
    assert reply.choices[0].model_dump(exclude_none=True) == {
        "index": 0,
        "finish_reason": "tool_calls",
        "message": {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_sim1_0",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"query":"find some cats"}'},
                }
            ],
        },
    }
    assert reply.usage is not None and reply.usage.completion_tokens == 3


@pytest.mark.asyncio
async def test_tool_choice_none_named_and_after_a_tool_result() -> None:
    answered = [
        *USER,
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "x", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "three cats"},
    ]
    named = {"type": "function", "function": {"name": "fetch"}}
    async with Simulator(Behaviour(completion_tokens=1)) as sim, oai(sim) as client:
        none = await client.chat.completions.create(model="m", messages=USER, tools=TOOLS, tool_choice="none")
        after = await client.chat.completions.create(model="m", messages=answered, tools=TOOLS)
        chosen = await client.chat.completions.create(model="m", messages=USER, tools=TOOLS, tool_choice=named)
    assert (none.choices[0].message.content, none.choices[0].finish_reason) == (" sim1", "stop")
    assert (after.choices[0].message.content, after.choices[0].finish_reason) == (" sim1", "stop")
    assert [call.function.name for call in chosen.choices[0].message.tool_calls or []] == ["fetch"]


@pytest.mark.asyncio
async def test_parallel_tool_calls_stream() -> None:
    async with Simulator(Behaviour(parallel_tool_calls=2)) as sim, oai(sim) as client:
        stream = await client.chat.completions.create(model="m", messages=USER, tools=TOOLS, stream=True)
        deltas = [chunk.choices[0].model_dump(exclude_none=True) async for chunk in stream]
        single = await client.chat.completions.create(model="m", messages=USER, tools=TOOLS, parallel_tool_calls=False)

    def call(index: int, function: dict[str, str], **head: str) -> dict[str, Any]:
        return {"index": 0, "delta": {"tool_calls": [{"index": index, **head, "function": function}]}}

    assert deltas == [
        {"index": 0, "delta": {"role": "assistant"}},
        call(0, {"name": "search", "arguments": ""}, id="call_sim1_0", type="function"),
        call(0, {"arguments": '{"query":'}),
        call(0, {"arguments": '"find some cats"'}),
        call(0, {"arguments": "}"}),
        call(1, {"name": "lookup", "arguments": ""}, id="call_sim1_1", type="function"),
        call(1, {"arguments": '{"query":'}),
        call(1, {"arguments": '"find some cats"'}),
        call(1, {"arguments": "}"}),
        {"index": 0, "delta": {}, "finish_reason": "tool_calls"},
    ]
    assert [c.function.name for c in single.choices[0].message.tool_calls or []] == ["search"]


# --- completions, embeddings, models ---------------------------------------------


@pytest.mark.asyncio
async def test_completions() -> None:
    async with Simulator(Behaviour(completion_tokens=2)) as sim, oai(sim) as client:
        whole = await client.completions.create(model="m", prompt="say two words")
        stream = await client.completions.create(
            model="m", prompt="x", stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk.model_dump(exclude_none=True, exclude={"created"}) async for chunk in stream]
    assert whole.model_dump(exclude_none=True, exclude={"created"}) == {
        "id": "cmpl-sim1",
        "object": "text_completion",
        "model": "m",
        "choices": [{"text": " sim1 sim2", "index": 0, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    head = {"id": "cmpl-sim2", "object": "text_completion", "model": "m"}
    assert chunks == [
        {**head, "choices": [{"text": " sim1", "index": 0}]},
        {**head, "choices": [{"text": " sim2", "index": 0}]},
        {**head, "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    ]


@pytest.mark.asyncio
async def test_embeddings_float_and_base64() -> None:
    async with Simulator(Behaviour(embedding_dim=6)) as sim, oai(sim) as client:
        floats = await client.embeddings.create(model="e", input=["a b", "c"], encoding_format="float")
        decoded = await client.embeddings.create(model="e", input="a b")  # the SDK asks for base64
        wide = await client.embeddings.create(model="e", input="a b", dimensions=3, encoding_format="float")
        _, raw = await post(sim, "/v1/embeddings", {"model": "e", "input": "c", "encoding_format": "base64"})
    assert floats.model_dump() == {
        "object": "list",
        "model": "e",
        "data": [
            {"object": "embedding", "index": 0, "embedding": embedding("a b", 6)},
            {"object": "embedding", "index": 1, "embedding": embedding("c", 6)},
        ],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    assert decoded.data[0].embedding == embedding("a b", 6)
    assert wide.data[0].embedding == embedding("a b", 3)
    assert orjson.loads(raw)["data"] == [{"object": "embedding", "index": 0, "embedding": embedding_base64("c", 6)}]
    vector = array("f", base64.b64decode(embedding_base64("c", 6))).tolist()
    assert vector == embedding("c", 6)
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-6
    assert embedding("a b", 6) != embedding("c", 6)


@pytest.mark.asyncio
async def test_models_and_ollama_tags() -> None:
    async with Simulator(models=["a", "b"]) as sim, oai(sim) as client:
        listed = await client.models.list()
        async with session() as http, http.get(sim.url + "/api/tags") as response:
            tags = await response.json()
    assert [m.model_dump(exclude_none=True) for m in listed.data] == [
        {"id": "a", "object": "model", "created": 0, "owned_by": "labgate-simulator"},
        {"id": "b", "object": "model", "created": 0, "owned_by": "labgate-simulator"},
    ]
    digest = hashlib.sha256(b"a").hexdigest()
    assert tags["models"][0] == {
        "name": "a",
        "model": "a",
        "modified_at": "2024-01-01T00:00:00Z",
        "size": 1_000_000 + int(digest[:6], 16),
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "sim",
            "families": ["sim"],
            "parameter_size": "1B",
            "quantization_level": "Q4_K_M",
        },
    }
    assert [m["name"] for m in tags["models"]] == ["a", "b"]


# --- Anthropic --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_messages_non_stream() -> None:
    async with Simulator(Behaviour(completion_tokens=3)) as sim, claude(sim) as client:
        message = await client.messages.create(model="claude-x", max_tokens=100, system="be brief", messages=USER)
        capped = await client.messages.create(model="claude-x", max_tokens=2, messages=USER)
        stopped = await client.messages.create(
            model="claude-x", max_tokens=100, messages=USER, stop_sequences=["nope", " sim2"]
        )
    assert message.model_dump(exclude_none=True) == {
        "id": "msg_sim1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": " sim1 sim2 sim3"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    assert [block.model_dump(exclude_none=True) for block in capped.content] == [{"type": "text", "text": " sim1 sim2"}]
    assert (capped.stop_reason, capped.usage.output_tokens) == ("max_tokens", 2)
    assert [block.model_dump(exclude_none=True) for block in stopped.content] == [{"type": "text", "text": " sim1"}]
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", " sim2")


@pytest.mark.asyncio
async def test_messages_stream_text_with_the_sdk() -> None:
    async with (
        Simulator(Behaviour(completion_tokens=2)) as sim,
        claude(sim) as client,
        client.messages.stream(model="c", max_tokens=10, messages=USER) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == [" sim1", " sim2"]
    assert final.model_dump(exclude_none=True) == {
        "id": "msg_sim1",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "content": [{"type": "text", "text": " sim1 sim2"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }


@pytest.mark.asyncio
async def test_messages_stream_on_the_wire() -> None:
    body = {"model": "c", "max_tokens": 10, "messages": USER, "stream": True}
    async with Simulator(Behaviour(completion_tokens=1)) as sim:
        status, raw = await post(sim, "/v1/messages", body, {"anthropic-version": "2023-06-01"})
    start = {
        "id": "msg_sim1",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    assert status == 200
    assert events(raw) == [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " sim1"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 1},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


@pytest.mark.asyncio
async def test_messages_tool_use_stream_and_not() -> None:
    answered = [
        *USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "search", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "three cats"}]},
    ]
    async with Simulator(Behaviour(parallel_tool_calls=2, completion_tokens=1)) as sim, claude(sim) as client:
        async with client.messages.stream(model="c", max_tokens=10, messages=USER, tools=CLAUDE_TOOLS) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_message()
        named = await client.messages.create(
            model="c", max_tokens=10, messages=USER, tools=CLAUDE_TOOLS, tool_choice={"type": "tool", "name": "lookup"}
        )
        after = await client.messages.create(model="c", max_tokens=10, messages=answered, tools=CLAUDE_TOOLS)
        none = await client.messages.create(
            model="c", max_tokens=10, messages=USER, tools=CLAUDE_TOOLS, tool_choice={"type": "none"}
        )
    block = ["content_block_start", *["content_block_delta", "input_json"] * 3, "content_block_stop"]
    assert kinds == ["message_start", *block, *block, "message_delta", "message_stop"]
    assert [b.model_dump(exclude_none=True) for b in final.content] == [
        {"type": "tool_use", "id": "toolu_sim1_0", "name": "search", "input": {"query": "find some cats"}},
        {"type": "tool_use", "id": "toolu_sim1_1", "name": "lookup", "input": {"query": "find some cats"}},
    ]
    assert (final.stop_reason, final.usage.output_tokens) == ("tool_use", 6)
    assert [b.model_dump(exclude_none=True) for b in named.content] == [
        {"type": "tool_use", "id": "toolu_sim2_0", "name": "lookup", "input": {"query": "find some cats"}}
    ]
    assert (after.content[0].type, after.stop_reason, after.usage.input_tokens) == ("text", "end_turn", 5)
    assert (none.content[0].type, none.stop_reason) == ("text", "end_turn")


@pytest.mark.asyncio
async def test_messages_request_checks() -> None:
    version = {"anthropic-version": "2023-06-01"}
    async with Simulator() as sim, claude(sim) as client:
        no_max = await post(sim, "/v1/messages", {"model": "c", "messages": USER}, version)
        no_version = await post(sim, "/v1/messages", {"model": "c", "max_tokens": 5, "messages": USER})
        with pytest.raises(anthropic.BadRequestError) as raised:
            # the SDK checks for max_tokens itself, so send the body as it is
            await client.post("/v1/messages", cast_to=anthropic.types.Message, body={"model": "c", "messages": USER})
    assert no_max == (
        400,
        b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}',
    )
    assert no_version[0] == 400
    assert orjson.loads(no_version[1]) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "anthropic-version: header is required"},
    }
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


# --- faults ----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("code", "error"),
    [(500, openai.InternalServerError), (502, openai.InternalServerError), (503, openai.InternalServerError)],
)
async def test_status_faults_in_both_dialects(code: int, error: type[openai.APIStatusError]) -> None:
    async with Simulator(Behaviour(fault=Status(code))) as sim, oai(sim) as client, claude(sim) as aclient:
        with pytest.raises(error) as raised:
            await client.chat.completions.create(model="m", messages=USER)
        with pytest.raises(anthropic.APIStatusError) as araised:
            await aclient.messages.create(model="m", max_tokens=5, messages=USER)
    assert (raised.value.status_code, raised.value.body) == (
        code,
        {"message": "simulated upstream error", "type": "server_error", "param": None, "code": None},
    )
    assert (araised.value.status_code, araised.value.body) == (
        code,
        {"type": "error", "error": {"type": "api_error", "message": "simulated upstream error"}},
    )


@pytest.mark.asyncio
async def test_rate_limit_fault_sends_retry_after() -> None:
    async with Simulator(Behaviour(fault=RateLimit(retry_after=7))) as sim, oai(sim) as client, claude(sim) as aclient:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="m", messages=USER, stream=True)
        with pytest.raises(anthropic.RateLimitError) as araised:
            await aclient.messages.create(model="m", max_tokens=5, messages=USER)
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.body == {
        "message": "Rate limit reached (simulated).",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert araised.value.response.headers["retry-after"] == "7"
    assert araised.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached (simulated)."},
    }


@pytest.mark.asyncio
async def test_hang_makes_the_client_time_out_and_stop_releases_it() -> None:
    async with Simulator(Behaviour(fault=Hang())) as sim, oai(sim, timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="m", messages=USER)
        assert 0.19 <= time.monotonic() - started < 2  # timers may fire ~1 ms early
        async with session() as http:
            pending = asyncio.create_task(
                http.post(sim.url + "/v1/chat/completions", json={"model": "m", "messages": USER})
            )
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await sim.stop()
            assert time.monotonic() - started < 1
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await pending


@pytest.mark.asyncio
async def test_not_json_fault() -> None:
    async with Simulator(Behaviour(fault=NotJSON())) as sim:
        whole = await post(sim, "/v1/chat/completions", {"model": "m", "messages": USER})
        streamed = await post(sim, "/v1/chat/completions", {"model": "m", "messages": USER, "stream": True})
        anthropic_stream = await post(
            sim,
            "/v1/messages",
            {"model": "m", "max_tokens": 5, "messages": USER, "stream": True},
            {"anthropic-version": "1"},
        )
    assert whole == (200, b"<html><body>simulated proxy page</body></html>")
    assert streamed == (200, b"data: <html>simulated proxy page</html>\n\n")
    assert anthropic_stream == (200, b"event: message_start\ndata: <html>simulated proxy page</html>\n\n")


async def raw_exchange(sim: Simulator, path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
    """Every byte the simulator sends for one request, until it closes the connection (no SDK in between)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    data = orjson.dumps(body)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    writer.write(f"POST {path} HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n{extra}"
                 f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode() + data)
    try:
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


def dechunk(raw: bytes) -> tuple[bytes, bytes, bool]:
    """(head, body, complete) of a chunked answer: complete only if the terminating zero-size chunk came."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return head, body, rest == b"\r\n"
        body, rest = body + rest[:size], rest[size + 2:]
    return head, body, False


@pytest.mark.asyncio
async def test_disconnect_before_any_byte() -> None:
    async with Simulator(Behaviour(fault=Disconnect())) as sim, oai(sim) as client:
        raw = await raw_exchange(sim, "/v1/chat/completions", {"model": "m", "messages": USER})
        with pytest.raises(openai.APIConnectionError):  # the SDK's public class for "no answer"
            await client.chat.completions.create(model="m", messages=USER)
    assert raw == b""  # the connection closed before a single byte of an answer


@pytest.mark.asyncio
async def test_cut_mid_stream_truncates_the_chunked_body() -> None:
    """What goes on the wire: the events before the cut, then the connection closes without the last chunk."""
    chat = {"model": "m", "messages": USER, "stream": True}
    async with Simulator(Behaviour(completion_tokens=5, fault=CutStream(after=3))) as sim:
        head, body, complete = dechunk(await raw_exchange(sim, "/v1/chat/completions", chat))
        whole = dechunk(await raw_exchange(sim, "/v1/chat/completions", {**chat, "stream": False}))
        _, messages_body, messages_complete = dechunk(await raw_exchange(
            sim, "/v1/messages", {"model": "m", "max_tokens": 9, "messages": USER, "stream": True},
            {"anthropic-version": "2023-06-01"}))
        sim.set(Behaviour(completion_tokens=1, fault=CutStream(after=99)))
        _, all_events, all_complete = dechunk(await raw_exchange(sim, "/v1/chat/completions", chat))
    assert (head.split(b"\r\n")[0], complete) == (b"HTTP/1.1 200 OK", False)
    assert [e["choices"][0]["delta"].get("content") for _, e in events(body)] == ["", " sim1", " sim2"]
    # a whole body: the first half of the JSON, then the connection closes
    _, half, whole_complete = whole
    assert (half[:30], whole_complete) == (b'{"id":"chatcmpl-sim2","object"', False)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(half)
    # message_start, ping, content_block_start: no text yet, and no end
    assert ([name for name, _ in events(messages_body)], messages_complete) == (
        ["message_start", "ping", "content_block_start"], False)
    # every event went out, [DONE] included, yet the chunked body never ends
    assert (events(all_events)[-1], all_complete) == ((None, "[DONE]"), False)


@pytest.mark.asyncio
async def test_fail_first_n_then_succeed() -> None:
    async with Simulator(Behaviour(completion_tokens=1, fault=Status(503), fail_first_n=2)) as sim:
        statuses = [(await post(sim, "/v1/chat/completions", {"model": "m", "messages": USER}))[0] for _ in range(4)]
        sim.set(sim.behaviour)  # a `set` restarts the count
        again = [(await post(sim, "/v1/chat/completions", {"model": "m", "messages": USER}))[0] for _ in range(3)]
    assert statuses == [503, 503, 200, 200]
    assert again == [503, 503, 200]


@pytest.mark.asyncio
async def test_fail_rate_is_seeded() -> None:
    draws = random.Random(5)
    expected = [503 if draws.random() < 0.5 else 200 for _ in range(12)]
    async with Simulator(Behaviour(fault=Status(503), fail_rate=0.5), seed=5) as sim:
        statuses = [(await post(sim, "/v1/chat/completions", {"model": "m", "messages": USER}))[0] for _ in range(12)]
    assert statuses == expected
    assert 200 in statuses and 503 in statuses


def test_behaviour_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="need a fault"):
        Behaviour(fail_first_n=2)
    with pytest.raises(ValueError, match="fail_rate"):
        Behaviour(fault=Hang(), fail_rate=2)
    with pytest.raises(ValueError, match="latency_s"):
        Behaviour(latency_s=-1)


# --- auth, models, overrides, recording --------------------------------------------


@pytest.mark.asyncio
async def test_api_key_in_both_dialects() -> None:
    async with Simulator(api_key="sk-test") as sim:
        async with oai(sim) as good, oai(sim, api_key="wrong") as bad:
            assert (await good.chat.completions.create(model="m", messages=USER)).choices[0].finish_reason == "stop"
            with pytest.raises(openai.AuthenticationError) as wrong:
                await bad.chat.completions.create(model="m", messages=USER)
            with pytest.raises(openai.AuthenticationError):
                await bad.models.list()
        missing = await post(sim, "/v1/chat/completions", {"model": "m", "messages": USER})
        async with claude(sim, api_key="sk-test") as agood, claude(sim, api_key="nope") as abad:
            assert (await agood.messages.create(model="m", max_tokens=50, messages=USER)).stop_reason == "end_turn"
            with pytest.raises(anthropic.AuthenticationError) as awrong:
                await abad.messages.create(model="m", max_tokens=5, messages=USER)
        body = {"model": "m", "max_tokens": 5, "messages": USER}
        x_api_key = await post(sim, "/v1/messages", body, {"anthropic-version": "1", "x-api-key": "sk-test"})
        no_key = await post(sim, "/v1/messages", body, {"anthropic-version": "1"})
    assert wrong.value.body == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert missing[0] == 401
    assert orjson.loads(missing[1])["error"]["message"].startswith("You didn't provide an API key.")
    assert awrong.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    assert x_api_key[0] == 200
    assert no_key == (
        401,
        b'{"type":"error","error":{"type":"authentication_error","message":"x-api-key header is required"}}',
    )


@pytest.mark.asyncio
async def test_unknown_model_and_bad_requests() -> None:
    async with Simulator(models=["known"]) as sim, oai(sim) as client, claude(sim) as aclient:
        with pytest.raises(openai.NotFoundError) as raised:
            await client.chat.completions.create(model="other", messages=USER)
        with pytest.raises(anthropic.NotFoundError) as araised:
            await aclient.messages.create(model="other", max_tokens=5, messages=USER)
        not_json = await post(sim, "/v1/chat/completions", "not an object")
        no_messages = await post(sim, "/v1/chat/completions", {"model": "known"})
        odd_tools = await post(sim, "/v1/chat/completions", {"model": "known", "messages": USER, "tools": 5})
    assert raised.value.body == {
        "message": "The model `other` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    assert araised.value.body == {"type": "error", "error": {"type": "not_found_error", "message": "model: other"}}
    assert not_json[0] == 400
    assert (odd_tools[0], orjson.loads(odd_tools[1])["error"]["type"]) == (400, "invalid_request_error")
    assert orjson.loads(no_messages[1]) == {
        "error": {
            "message": "Missing required parameter: 'messages'.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }
    }


@pytest.mark.asyncio
async def test_per_model_overrides_and_runtime_set() -> None:
    per_model = {"short": Behaviour(completion_tokens=1), "broken": Behaviour(fault=Status(500))}
    async with Simulator(Behaviour(completion_tokens=2), per_model=per_model) as sim, oai(sim) as client:

        async def say(model: str) -> str | int:
            try:
                reply = await client.chat.completions.create(model=model, messages=USER)
            except openai.APIStatusError as error:
                return error.status_code
            return reply.choices[0].message.content or ""

        before = [await say("short"), await say("broken"), await say("other")]
        sim.set(Behaviour(fault=Status(502)))
        sim.set(model="broken", behaviour=None)
        sim.set(model="short", behaviour=Behaviour(completion_tokens=3))
        after = [await say("short"), await say("broken"), await say("other")]
        sim.set(Behaviour())
        healed = await say("broken")
    assert before == [" sim1", 500, " sim1 sim2"]
    assert after == [sim_text(3), 502, 502]
    assert healed == sim_text(8)
    assert sim.behaviour_for("short") == Behaviour(completion_tokens=3)


@pytest.mark.asyncio
async def test_requests_are_recorded_and_cleared() -> None:
    async with Simulator() as sim, oai(sim) as client:
        await client.chat.completions.create(model="m", messages=USER, max_completion_tokens=4)
        await client.models.list()
        first, listing = sim.requests
        sim.clear()
        assert sim.requests == []
    assert (first.method, first.path, first.body) == (
        "POST",
        "/v1/chat/completions",
        {"model": "m", "messages": USER, "max_completion_tokens": 4},
    )
    assert first.headers["authorization"] == "Bearer sk-test"
    assert listing == Received("GET", "/v1/models", listing.headers, None)


# --- timing ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_latency_ttft_and_tokens_per_second() -> None:
    behaviour = Behaviour(latency_s=0.05, ttft_s=0.1, tokens_per_s=20, completion_tokens=3)
    async with Simulator(behaviour) as sim, session() as http:
        started = time.monotonic()
        body = {"model": "m", "messages": USER, "stream": True}
        async with http.post(sim.url + "/v1/chat/completions", json=body) as response:
            head_at = time.monotonic() - started
            arrivals = []
            async for line in response.content:
                if line.startswith(b"data: {") and b'"content":" sim' in line:
                    arrivals.append(time.monotonic() - started)
        started = time.monotonic()
        await post(sim, "/v1/chat/completions", {"model": "m", "messages": USER})
        whole = time.monotonic() - started
    # head after latency; first token ttft later; then one every 50 ms
    # lower bounds allow a timer firing ~1 ms early; upper bounds leave room for a busy machine
    assert 0.045 <= head_at < 0.145
    assert len(arrivals) == 3
    assert 0.145 <= arrivals[0] < 0.3
    assert 0.245 <= arrivals[2] < 0.6
    assert 0.245 <= whole < 0.6  # latency + ttft + 2 token intervals, all before the head


# --- running it --------------------------------------------------------------------


def test_thread_runner_with_sync_clients() -> None:
    simulator = Simulator(Behaviour(completion_tokens=2))
    with simulator.run_in_thread() as sim:
        client = openai.OpenAI(base_url=sim.url + "/v1", api_key="k", max_retries=0, timeout=5)
        reply = client.chat.completions.create(model="m", messages=USER)
        with client.chat.completions.create(model="m", messages=USER, stream=True) as stream:
            deltas = [chunk.choices[0].delta.content for chunk in stream]
        aclient = anthropic.Anthropic(base_url=sim.url, api_key="k", max_retries=0, timeout=5)
        with aclient.messages.stream(model="c", max_tokens=5, messages=USER) as astream:
            text = "".join(astream.text_stream)
        sim.set(Behaviour(fault=Status(503)))
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=USER)
        url = sim.url
    assert reply.choices[0].message.content == " sim1 sim2"
    assert deltas == ["", " sim1", " sim2", None]
    assert text == " sim1 sim2"
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(url + "/v1/models", timeout=2)


@pytest.mark.asyncio
async def test_several_simulators_in_one_loop() -> None:
    async with Simulator(models=["a"]) as first, Simulator(models=["b"], port=0) as second:
        assert first.port != second.port
        async with oai(first) as one, oai(second) as two:
            assert [m.id for m in (await one.models.list()).data] == ["a"]
            assert [m.id for m in (await two.models.list()).data] == ["b"]


def test_command_line() -> None:
    command = [sys.executable, "-m", "labgate.testing.simulator", "--models", "a,b", "--latency", "0.01"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready.startswith("READY http://127.0.0.1:")
        url = ready.split()[1]
        listed = httpx2.get(url + "/v1/models", timeout=2).json()
        assert [m["id"] for m in listed["data"]] == ["a", "b"]
        reply = httpx2.post(url + "/v1/chat/completions", json={"model": "c", "messages": USER}, timeout=2)
        assert reply.status_code == 404
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=5)
    assert process.returncode == 0
    assert stderr == ""
