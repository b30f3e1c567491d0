"""AnthropicAdapter against a real HTTP server on an ephemeral port.

The upstream is a small ``aiohttp.web`` app in this file (``labgate.testing``'s
simulator was not ready yet); each test scripts what it answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from labgate.errors import (
    UnsupportedEndpointError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamStatusError,
)
from labgate.providers.anthropic.adapter import AnthropicAdapter
from labgate.providers.anthropic.config import AnthropicConfig
from labgate.providers.base import Call, IteratorStream, ModelLister, Reply, StreamInfo, Usage

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TIMEOUT = 5.0


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


@dataclass
class Upstream:
    """A scripted Anthropic upstream: ``handler`` answers /v1/messages; requests are kept."""

    url: str = ""
    handler: Handler | None = None
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path_qs, dict(request.headers), await request.read()))
        assert self.handler is not None
        return await self.handler(request)

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path_qs, dict(request.headers), b""))
        return web.json_response(self.models.pop(0))


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_post("/v1/messages", up.messages)
    app.router.add_get("/v1/models", up.list_models)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await within(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await within(site.start())
    port = runner.addresses[0][1]
    up.url = f"http://127.0.0.1:{port}"
    yield up
    await within(runner.cleanup())


@pytest_asyncio.fixture
async def adapter(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AnthropicAdapter]:
    monkeypatch.setenv("LABGATE_TEST_ANTHROPIC_KEY", "sk-test")
    config = AnthropicConfig(type="anthropic", base_url=upstream.url + "/v1", api_key_env="LABGATE_TEST_ANTHROPIC_KEY",
                             headers={"anthropic-beta": "tools-2024"}, default_max_tokens=64)
    made = AnthropicAdapter(config, name="claude")
    yield made
    await within(made.aclose())


def chat_call(**body: Any) -> Call:
    return Call(endpoint="chat", body={"model": "public", "messages": [{"role": "user", "content": "hi"}], **body},
                model="claude-x", timeout=TIMEOUT, request_id="req-1")


def json_answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                            headers=headers)
    return answer


def stream_answer(pieces: list[bytes], *, cut: bool = False) -> Handler:
    """SSE ``pieces`` written one by one; ``cut`` drops the connection instead of ending the body."""
    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.005)
        if cut:
            assert request.transport is not None
            request.transport.close()
        else:
            await response.write_eof()
        return response
    return answer


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


MESSAGE_START = sse("message_start", {"type": "message_start", "message": {
    "id": "msg_9", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
    "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1}}})
TEXT = b"".join([
    sse("content_block_start", {"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
    sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": "Hello"}}),
    sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
])
MESSAGE_END = (sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                     "usage": {"output_tokens": 5}})
               + sse("message_stop", {"type": "message_stop"}))
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


async def drain(stream: IteratorStream) -> list[bytes]:
    async def read() -> list[bytes]:
        return [piece async for piece in stream]
    return await within(read())


def parsed(pieces: list[bytes]) -> list[Any]:
    out = b"".join(pieces)
    return [e[6:].decode() if e == b"data: [DONE]" else orjson.loads(e[6:]) for e in out.split(b"\n\n") if e]


# ---------------------------------------------------------------- send


@pytest.mark.asyncio
async def test_send_translates_both_ways_and_sends_the_anthropic_headers(
        upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = json_answer(200, {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x-2025",
        "content": [{"type": "text", "text": "Hi!"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 9, "output_tokens": 4}})
    reply = await within(adapter.send(chat_call(max_tokens=10, stop=["x"])))
    completion = orjson.loads(reply.body)
    assert completion == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": completion["created"], "model": "claude-x-2025",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Hi!",
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
    assert isinstance(completion["created"], int)
    assert (reply.usage, reply.finish_reason) == (Usage(prompt_tokens=9, completion_tokens=4), "tool_calls")
    path, headers, body = upstream.seen[0]
    assert (path, headers["x-api-key"], headers["anthropic-version"], headers["anthropic-beta"],
            headers["Content-Type"]) == ("/v1/messages", "sk-test", "2023-06-01", "tools-2024", "application/json")
    assert orjson.loads(body) == {"model": "claude-x", "max_tokens": 10, "stop_sequences": ["x"],
                                  "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


@pytest.mark.asyncio
async def test_default_max_tokens_comes_from_config(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = json_answer(200, {"id": "m", "model": "c", "content": [], "stop_reason": "end_turn",
                                         "usage": {"input_tokens": 1, "output_tokens": 0}})
    reply = await within(adapter.send(chat_call()))
    assert orjson.loads(upstream.seen[0][2])["max_tokens"] == 64
    assert orjson.loads(reply.body)["choices"][0]["message"] == {"role": "assistant", "content": None}


@pytest.mark.asyncio
async def test_overloaded_529_is_a_retryable_status_error(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = json_answer(529, OVERLOADED)
    with pytest.raises(UpstreamStatusError) as info:
        await within(adapter.send(chat_call()))
    assert (info.value.upstream_status, info.value.retryable, info.value.message) == (
        529, True, "provider 'claude' answered 529: Overloaded")


@pytest.mark.asyncio
async def test_rate_limit_and_rejection(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = json_answer(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
                                   headers={"retry-after": "7"})
    with pytest.raises(UpstreamRateLimitError) as limited:
        await within(adapter.send(chat_call()))
    assert (limited.value.retry_after, limited.value.status) == (7.0, 429)
    upstream.handler = json_answer(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                    "message": "max_tokens: too big"}})
    with pytest.raises(UpstreamRejectedError) as rejected:
        await within(adapter.send(chat_call()))
    assert (rejected.value.status, rejected.value.retryable, rejected.value.message) == (
        400, False, "provider 'claude' answered 400: max_tokens: too big")


@pytest.mark.asyncio
async def test_a_200_that_is_not_a_message_is_a_bad_response(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = json_answer(200, {"type": "message"})
    with pytest.raises(UpstreamBadResponseError):
        await within(adapter.send(chat_call()))


@pytest.mark.asyncio
async def test_other_endpoints_are_refused(adapter: AnthropicAdapter) -> None:
    call = Call(endpoint="embeddings", body={"input": "x"}, model="m", timeout=1, request_id="r")
    with pytest.raises(UnsupportedEndpointError):
        await within(adapter.send(call))
    assert adapter.endpoints == frozenset({"chat", "messages"})


@pytest.mark.asyncio
async def test_nothing_listening_is_a_connection_error() -> None:
    config = AnthropicConfig(type="anthropic", base_url="http://127.0.0.1:9")
    closed = AnthropicAdapter(config, name="gone")
    try:
        with pytest.raises(UpstreamConnectionError):
            await within(closed.send(chat_call()))
    finally:
        await within(closed.aclose())


# ---------------------------------------------------------------- stream


@pytest.mark.asyncio
async def test_stream_relays_openai_chunks_with_usage(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    raw = MESSAGE_START + TEXT + MESSAGE_END
    upstream.handler = stream_answer([raw[i:i + 37] for i in range(0, len(raw), 37)])
    stream = await within(adapter.stream(chat_call(stream=True, stream_options={"include_usage": True})))
    events = parsed(await drain(stream))
    head = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": events[0]["created"], "model": "claude-x"}
    assert events == [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}},
        "[DONE]",
    ]
    assert stream.info.first_token is not None  # set at the first content_block_delta
    assert stream.info == StreamInfo(usage=Usage(prompt_tokens=12, completion_tokens=5), finish_reason="stop",
                                     chunks=5, first_token=stream.info.first_token)
    assert orjson.loads(upstream.seen[0][2])["stream"] is True


@pytest.mark.asyncio
async def test_stream_returns_only_once_message_start_has_arrived(upstream: Upstream,
                                                                  adapter: AnthropicAdapter) -> None:
    release = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
        await release.wait()
        await response.write(MESSAGE_START + TEXT + MESSAGE_END)
        await response.write_eof()
        return response

    upstream.handler = answer
    opening = asyncio.ensure_future(adapter.stream(chat_call(stream=True)))
    await asyncio.sleep(0.1)
    assert not opening.done()
    release.set()
    stream = await within(opening)
    assert [e if e == "[DONE]" else e["choices"][0]["delta"] for e in parsed(await drain(stream))] == [
        {"role": "assistant", "content": ""}, {"content": "Hello"}, {}, "[DONE]"]


@pytest.mark.asyncio
async def test_error_before_the_first_event_fails_the_open(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = stream_answer([sse("error", OVERLOADED)])
    with pytest.raises(UpstreamStatusError) as info:
        await within(adapter.stream(chat_call(stream=True)))
    assert (info.value.upstream_status, info.value.retryable) == (529, True)


@pytest.mark.asyncio
async def test_error_status_fails_the_open(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = json_answer(529, OVERLOADED)
    with pytest.raises(UpstreamStatusError):
        await within(adapter.stream(chat_call(stream=True)))


@pytest.mark.asyncio
async def test_empty_stream_fails_the_open(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = stream_answer([])
    with pytest.raises(UpstreamConnectionError) as info:
        await within(adapter.stream(chat_call(stream=True)))
    assert info.value.message == "provider 'claude' closed the stream before its first event"


@pytest.mark.asyncio
async def test_overloaded_mid_stream_is_raised_from_the_iterator(upstream: Upstream,
                                                                 adapter: AnthropicAdapter) -> None:
    upstream.handler = stream_answer([MESSAGE_START, TEXT, sse("error", OVERLOADED)])
    stream = await within(adapter.stream(chat_call(stream=True)))
    received: list[bytes] = []
    with pytest.raises(UpstreamStatusError) as info:
        async with asyncio.timeout(TIMEOUT):
            async for piece in stream:
                received.append(piece)
    assert (info.value.upstream_status, len(parsed(received))) == (529, 2)


@pytest.mark.asyncio
@pytest.mark.parametrize("cut", [False, True])
async def test_stream_ending_without_message_stop_is_a_connection_error(
        upstream: Upstream, adapter: AnthropicAdapter, cut: bool) -> None:
    upstream.handler = stream_answer([MESSAGE_START, TEXT], cut=cut)
    stream = await within(adapter.stream(chat_call(stream=True)))
    with pytest.raises(UpstreamConnectionError):
        await drain(stream)
    assert stream.info.finish_reason is None


# ---------------------------------------------------------------- models


@pytest.mark.asyncio
async def test_list_models_follows_pages(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.models = [
        {"data": [{"id": "claude-a", "type": "model"}, {"id": "claude-b", "type": "model"}],
         "has_more": True, "first_id": "claude-a", "last_id": "claude-b"},
        {"data": [{"id": "claude-c", "type": "model"}], "has_more": False, "first_id": "claude-c",
         "last_id": "claude-c"},
    ]
    assert isinstance(adapter, ModelLister)
    assert await within(adapter.list_models(timeout=TIMEOUT)) == ["claude-a", "claude-b", "claude-c"]
    assert [path for path, _, _ in upstream.seen] == ["/v1/models?limit=1000",
                                                      "/v1/models?limit=1000&after_id=claude-b"]


# --- pass-through: a call from an Anthropic client ---------------------------------------------------

NATIVE = {"model": "public", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief.",
                                                             "cache_control": {"type": "ephemeral"}}],
          "messages": [{"role": "user", "content": "hi ☀️"}], "thinking": {"type": "enabled", "budget_tokens": 9},
          "tools": [{"type": "web_search_20250305", "name": "web_search"}]}


def native_call(**native: Any) -> Call:
    body = {**NATIVE, **native}
    return Call(endpoint="messages", body={"model": "public", "messages": []}, model="claude-x", timeout=TIMEOUT,
                request_id="req-1", native=body)


@pytest.mark.asyncio
async def test_a_native_call_sends_the_clients_body_with_only_the_model_changed(
        upstream: Upstream, adapter: AnthropicAdapter) -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "text", "text": "Hi."}], "stop_reason": "max_tokens", "stop_sequence": None,
               "usage": {"input_tokens": 7, "cache_read_input_tokens": 3, "output_tokens": 2}}
    raw = orjson.dumps(message, option=orjson.OPT_INDENT_2)  # odd spacing, to see it is not re-encoded

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=raw, content_type="application/json")
    upstream.handler = answer
    reply = await within(adapter.send(native_call()))
    assert reply == Reply(body=raw, usage=Usage(prompt_tokens=10, completion_tokens=2, cached_tokens=3),
                          finish_reason="length",
                          dialect="anthropic")
    path, headers, body = upstream.seen[-1]
    assert (path, orjson.loads(body)) == ("/v1/messages", {**NATIVE, "model": "claude-x"})
    assert list(orjson.loads(body)) == list(NATIVE)  # key order kept too
    assert (headers["x-api-key"], headers["anthropic-version"]) == ("sk-test", "2023-06-01")


@pytest.mark.asyncio
async def test_a_native_call_relays_the_stream_untranslated(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    ping = sse("ping", {"type": "ping"})
    upstream.handler = stream_answer([MESSAGE_START[:30], MESSAGE_START[30:] + ping, TEXT, MESSAGE_END])
    stream = await within(adapter.stream(native_call(stream=True)))
    assert stream.dialect == "anthropic"
    assert b"".join(await drain(stream)) == MESSAGE_START + ping + TEXT + MESSAGE_END
    assert (stream.info.usage, stream.info.finish_reason) == (Usage(12, 5), "stop")
    assert stream.info.first_token is not None
    assert orjson.loads(upstream.seen[-1][2]) == {**NATIVE, "stream": True, "model": "claude-x"}


@pytest.mark.asyncio
async def test_a_native_stream_that_fails_before_its_first_event_can_fall_back(
        upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = stream_answer([sse("error", OVERLOADED)])
    with pytest.raises(UpstreamStatusError) as info:
        await within(adapter.stream(native_call(stream=True)))
    assert (info.value.upstream_status, info.value.anthropic_type) == (529, "overloaded_error")


@pytest.mark.asyncio
async def test_a_native_reply_that_is_not_a_message_is_a_bad_response(
        upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = json_answer(200, {"type": "completion", "completion": "hi"})
    with pytest.raises(UpstreamBadResponseError, match="provider 'claude' sent a body that is not a message"):
        await within(adapter.send(native_call()))


@pytest.mark.asyncio
async def test_native_errors_are_the_same_errors(upstream: Upstream, adapter: AnthropicAdapter) -> None:
    upstream.handler = json_answer(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                    "message": "max_tokens: too large"}})
    with pytest.raises(UpstreamRejectedError) as info:
        await within(adapter.send(native_call()))
    assert (info.value.status, info.value.message) == (400, "provider 'claude' answered 400: max_tokens: too large")
