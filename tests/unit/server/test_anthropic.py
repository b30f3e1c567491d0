"""The Anthropic surface: request checks, then handlers driven in-process against simulators.

The handlers are called directly (``surface.messages(Request(...))``) and a
stream's body is read from ``Response.stream``, so chunk timing (pings) and
early closes are visible; the official SDK over real sockets is the contract
suite's job (``tests/contract/test_anthropic_inbound.py``).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio

from labgate.errors import RequestError
from labgate.gateway import Gateway
from labgate.providers.anthropic.inbound_stream import PING
from labgate.providers.base import StreamInfo, Translated
from labgate.runtime import Runtime
from labgate.server.anthropic import AnthropicSurface, EventStream, check_request, parse_messages
from labgate.server.http import Request, Response
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, CutStream, Simulator, Status
from labgate.testing.gateway import config_from

TIMEOUT = 5.0
HI = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


# ---------------------------------------------------------------- request checks


def body(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in {**HI, **changes}.items() if v is not ...}


def message(*blocks: Any, role: str = "user") -> dict[str, Any]:
    return body(messages=[{"role": role, "content": list(blocks)}])


@pytest.mark.parametrize(("payload", "problem"), [
    (body(model=...), "model: Field required"),
    (body(model=""), "model: Input should be a non-empty string"),
    (body(max_tokens=...), "max_tokens: Field required"),
    (body(max_tokens=0), "max_tokens: Input should be an integer greater than or equal to 1"),
    (body(max_tokens=True), "max_tokens: Input should be an integer greater than or equal to 1"),
    (body(messages=...), "messages: Field required"),
    (body(messages=[]), "messages: Input should be a non-empty list of messages"),
    (body(messages=["hi"]), "messages.0: Input should be a valid dictionary"),
    (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role: Input should be 'user' or 'assistant'"),
    (body(messages=[{"role": "user"}]), "messages.0.content: Field required"),
    (body(messages=[{"role": "user", "content": 3}]),
     "messages.0.content: Input should be a valid string or list of content blocks"),
    (message({"text": "no type"}), "messages.0.content.0.type: Field required: each content block is an object "
                                   "with a 'type'"),
    (message({"type": "text"}), "messages.0.content.0.text: Field required: a string"),
    (message({"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "x"}}),
     "messages.0.content.0.source.media_type: Input should be one of image/gif, image/jpeg, image/png, image/webp"),
    (message({"type": "image", "source": {"type": "base64", "media_type": "image/png"}}),
     "messages.0.content.0.source.data: Field required: a base64 string"),
    (message({"type": "image", "source": {"type": "url"}}),
     "messages.0.content.0.source.url: Field required: a string"),
    (message({"type": "image"}), "messages.0.content.0.source.type: Field required: 'base64' or 'url'"),
    (message({"type": "tool_use", "id": "t", "name": "f", "input": {}}),
     "messages.0.content.0.type: 'tool_use' blocks are only allowed in assistant messages"),
    (message({"type": "tool_use", "id": "t", "name": "f", "input": []}, role="assistant"),
     "messages.0.content.0.input: Input should be a valid dictionary"),
    (message({"type": "tool_use", "id": "", "name": "f", "input": {}}, role="assistant"),
     "messages.0.content.0.id: Field required: a non-empty string"),
    (message({"type": "tool_result", "tool_use_id": "t"}, role="assistant"),
     "messages.0.content.0.type: 'tool_result' blocks are only allowed in user messages"),
    (message({"type": "tool_result"}), "messages.0.content.0.tool_use_id: Field required: a non-empty string"),
    (message({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}),
     "messages.0.content.0.is_error: Input should be a valid boolean"),
    (message({"type": "tool_result", "tool_use_id": "t", "content": 5}),
     "messages.0.content.0.content: Input should be a valid string or list of content blocks"),
    (message({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]}),
     "messages.0.content.0.content.0.text: Field required: a string"),
    (body(system=[{"type": "image"}]), "system: Input should be a valid string or a list of text blocks"),
    (body(stream="yes"), "stream: Input should be a valid boolean"),
    (body(temperature=1.5), "temperature: Input should be a number between 0 and 1"),
    (body(top_p=-0.1), "top_p: Input should be a number between 0 and 1"),
    (body(top_k=1.5), "top_k: Input should be a non-negative integer"),
    (body(stop_sequences="END"), "stop_sequences: Input should be a valid list of strings"),
    (body(metadata={"user_id": 7}), "metadata: Input should be an object whose 'user_id' is a string"),
    (body(tools={"name": "x"}), "tools: Input should be a valid list"),
    (body(tools=[{"name": "f"}]), "tools.0.input_schema: Field required: a JSON schema object"),
    (body(tools=[{"input_schema": {}}]), "tools.0.name: Field required: a non-empty string"),
    (body(tools=[{"name": "f", "input_schema": {}, "description": 3}]), "tools.0.description: Input should be a "
                                                                          "valid string"),
    (body(tool_choice={"type": "required"}), "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"),
    (body(tool_choice={"type": "tool"}), "tool_choice.name: Field required: the tool's name"),
    (body(tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
     "tool_choice.disable_parallel_tool_use: Input should be a valid boolean"),
])
def test_malformed_requests_are_refused_in_anthropics_words(payload: dict[str, Any], problem: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_messages(orjson.dumps(payload))
    assert (info.value.message, info.value.param) == (problem, problem.split(":")[0])


@pytest.mark.parametrize(("raw", "problem"), [
    (b"{", "The request body is not valid JSON: "), (b"[]", "The request body must be a JSON object.")])
def test_a_body_that_is_not_a_json_object(raw: bytes, problem: str) -> None:
    with pytest.raises(RequestError, match=f"^{problem}"):
        parse_messages(raw)


def test_count_tokens_needs_no_max_tokens() -> None:
    check_request(body(max_tokens=...), needs_max_tokens=False)
    with pytest.raises(RequestError, match="max_tokens: Input should be"):
        check_request(body(max_tokens=-1), needs_max_tokens=False)


def test_a_request_parses_to_its_translation_and_itself() -> None:
    payload = body(stream=True, tools=[{"type": "custom", "name": "f", "input_schema": {"type": "object"}}],
                   thinking={"type": "enabled", "budget_tokens": 1024}, future_field={"x": 1})
    assert parse_messages(orjson.dumps(payload)) == Translated(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10,
         "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
         "stream": True, "stream_options": {"include_usage": True}},
        payload, "chat")


def test_a_request_only_anthropic_can_serve_is_the_messages_endpoint() -> None:
    payload = body(tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert parse_messages(orjson.dumps(payload)).endpoint == "messages"


# ---------------------------------------------------------------- pings and closing


def openai_chunk(text: str) -> bytes:
    data = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class Upstream:
    """A Stream of OpenAI SSE chunks, each after its delay; remembers whether it was closed."""

    def __init__(self, *items: tuple[float, bytes], fail: Exception | None = None) -> None:
        self.items, self.fail, self.closed = items, fail, False
        self.info = StreamInfo()
        self.dialect = "openai"
        self._it = self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for delay, item in self.items:
            await asyncio.sleep(delay)
            yield item
        if self.fail is not None:
            raise self.fail

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._it

    async def aclose(self) -> None:
        self.closed = True
        await self._it.aclose()  # type: ignore[attr-defined]


def events(upstream: Upstream, interval: float) -> EventStream:
    return EventStream(upstream, where="provider 'p'", ping_interval=interval)  # type: ignore[arg-type]


def kinds(out: list[bytes]) -> list[str]:
    return [line.removeprefix(b"event: ").decode() for piece in out for line in piece.split(b"\n")
            if line.startswith(b"event: ")]


@pytest.mark.asyncio
async def test_pings_fill_the_silences() -> None:
    out = [c async for c in events(Upstream((0, openai_chunk("a")), (0.17, openai_chunk("b")), (0, DONE)), 0.05)]
    names = kinds(out)
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert 2 <= out.count(PING) <= 4 and names.count("ping") == out.count(PING) + 1


@pytest.mark.asyncio
async def test_no_ping_when_chunks_keep_coming() -> None:
    out = [c async for c in events(Upstream((0.01, openai_chunk("a")), (0.01, DONE)), 1.0)]
    assert kinds(out).count("ping") == 1  # the one right after message_start


@pytest.mark.asyncio
async def test_an_error_from_the_stream_is_raised() -> None:
    stream = events(Upstream((0, openai_chunk("a")), fail=RequestError("boom")), 1.0)
    first = await anext(stream)
    assert kinds([first])[0] == "message_start"
    with pytest.raises(RequestError, match="boom"):
        await anext(stream)


@pytest.mark.asyncio
async def test_closing_during_a_silence_cancels_the_pending_read() -> None:
    upstream = Upstream((0, openai_chunk("a")), (60, DONE))
    stream = events(upstream, 0.01)
    assert kinds([await anext(stream)])[0] == "message_start"
    assert await anext(stream) == PING
    await asyncio.wait_for(stream.aclose(), TIMEOUT)
    assert upstream.closed
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


@pytest.mark.asyncio
async def test_closing_before_the_first_event_closes_the_stream_underneath() -> None:
    upstream = Upstream((0, openai_chunk("a")), (0, DONE))
    await events(upstream, 1.0).aclose()
    assert upstream.closed


# ---------------------------------------------------------------- the handlers, against simulators


class Served:
    """A gateway over two simulators: ``oai`` (OpenAI dialect) and ``ant`` (Anthropic)."""

    def __init__(self, oai: Simulator, ant: Simulator, *, ping_interval: float = 10.0) -> None:
        self.oai, self.ant = oai, ant
        self.log = io.BytesIO()
        config = config_from(
            {"oai": {"type": "openai_compatible", "base_url": oai.url + "/v1", "models": ["m-oai", "m-both"],
                     "timeout_s": 2},
             "ant": {"type": "anthropic", "base_url": ant.url, "models": ["m-ant", "m-both"], "timeout_s": 2}},
            {"routing": {"exact_matches": {"m-both": {"provider": "oai", "fallback_chain": ["ant"]}}}},
            {"auth": {"master_key_env": "LABGATE_TEST_ANTHROPIC_SURFACE_KEY"}})
        self.runtime = Runtime.build(config, access_log=AccessLog(self.log))
        self.surface = AnthropicSurface(Gateway(self.runtime), ping_interval=ping_interval)

    def request(self, payload: Any, *, path: str = "/v1/messages", **headers: str) -> Request:
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return Request("POST", path, "", {"x-api-key": "sk-gw", **headers}, raw, "127.0.0.1")

    def records(self) -> list[dict[str, Any]]:
        self.runtime.access_log.flush()
        return [orjson.loads(line) for line in self.log.getvalue().splitlines()]


@pytest_asyncio.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv("LABGATE_TEST_ANTHROPIC_SURFACE_KEY", "sk-gw")
    async with Simulator(Behaviour(completion_tokens=3)) as oai, Simulator(Behaviour(completion_tokens=3)) as ant:
        made = Served(oai, ant)
        yield made
        await made.runtime.aclose()


async def body_of(response: Response) -> list[Any]:
    """A stream's events as (name, data) pairs; a whole body parsed."""
    if response.stream is None:
        return orjson.loads(response.body)

    async def read() -> bytes:
        return b"".join([c async for c in response.stream])  # type: ignore[union-attr]
    raw = await asyncio.wait_for(read(), TIMEOUT)
    out = []
    for event in raw.split(b"\n\n")[:-1]:
        name, data = event.split(b"\n")
        out.append((name.removeprefix(b"event: ").decode(), orjson.loads(data.removeprefix(b"data: "))))
    return out


@pytest.mark.asyncio
async def test_a_translated_answer(served: Served) -> None:
    response = await served.surface.messages(served.request(body(model="m-oai")))
    assert response.status == 200
    assert dict(response.headers)["x-labgate-provider"] == "oai"
    assert await body_of(response) == {
        "id": "msg_sim1", "type": "message", "role": "assistant", "model": "m-oai",
        "content": [{"type": "text", "text": " sim1 sim2 sim3"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 3}}
    assert served.oai.requests[-1].body == {"model": "m-oai", "messages": [{"role": "user", "content": "hi"}],
                                            "max_completion_tokens": 10}
    record = served.records()[-1]
    assert (record["endpoint"], record["prompt_tokens"], record["completion_tokens"], record["finish_reason"]) == (
        "messages", 1, 3, "stop")


@pytest.mark.asyncio
async def test_a_passed_through_answer_is_the_upstreams_body(served: Served) -> None:
    response = await served.surface.messages(served.request(body(model="m-ant", metadata={"user_id": "u"})))
    assert (response.status, dict(response.headers)["x-labgate-provider"]) == (200, "ant")
    assert await body_of(response) == {
        "id": "msg_sim1", "type": "message", "role": "assistant", "model": "m-ant",
        "content": [{"type": "text", "text": " sim1 sim2 sim3"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 3}}
    assert served.ant.requests[-1].body == body(model="m-ant", metadata={"user_id": "u"})
    record = served.records()[-1]
    assert (record["prompt_tokens"], record["completion_tokens"], record["finish_reason"]) == (1, 3, "stop")


@pytest.mark.asyncio
async def test_a_translated_stream_gets_pings_while_the_upstream_is_silent(served: Served) -> None:
    served.oai.set(Behaviour(completion_tokens=3, tokens_per_s=8))
    surface = AnthropicSurface(served.surface.gateway, ping_interval=0.05)
    response = await surface.messages(served.request(body(model="m-oai", stream=True)))
    events = await body_of(response)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert names.count("ping") >= 3  # one after message_start, the rest in the gaps between tokens
    assert events[-2][1]["usage"] == {"input_tokens": 1, "output_tokens": 3}


@pytest.mark.asyncio
async def test_a_passed_through_stream_is_the_upstreams_events(served: Served) -> None:
    response = await served.surface.messages(served.request(body(model="m-ant", stream=True)))
    events = await body_of(response)
    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"] == {"input_tokens": 1, "output_tokens": 1}  # as the upstream sent it
    assert served.ant.requests[-1].body == body(model="m-ant", stream=True)
    record = served.records()[-1]
    assert (record["stream"], record["completion_tokens"], record["finish_reason"]) == (True, 3, "stop")


@pytest.mark.parametrize("model", ["m-oai", "m-ant"])
@pytest.mark.asyncio
async def test_a_stream_cut_short_ends_with_an_error_event(served: Served, model: str) -> None:
    for sim in (served.oai, served.ant):
        sim.set(Behaviour(completion_tokens=5, fault=CutStream(after=4)))
    response = await served.surface.messages(served.request(body(model=model, stream=True)))
    events = await body_of(response)
    provider = dict(response.headers)["x-labgate-provider"]
    assert events[-1] == ("error", {"type": "error", "error": {
        "type": "api_error", "message": f"provider {provider!r} cut the response short"},
        "request_id": dict(response.headers)["x-request-id"]})
    assert served.records()[-1]["outcome"] == "stream_error"


@pytest.mark.asyncio
async def test_a_client_that_goes_away_mid_stream_is_recorded(served: Served) -> None:
    served.oai.set(Behaviour(completion_tokens=50, tokens_per_s=20))
    response = await served.surface.messages(served.request(body(model="m-oai", stream=True)))
    assert response.stream is not None
    await asyncio.wait_for(anext(response.stream), TIMEOUT)
    await asyncio.wait_for(response.stream.aclose(), TIMEOUT)  # type: ignore[attr-defined]
    assert served.records()[-1]["outcome"] == "client_disconnected"
    assert served.runtime.table.deployments["oai/m-oai"].health.inflight == 0


@pytest.mark.parametrize(("model", "deployment"), [("m-oai", "oai/m-oai"), ("m-ant", "ant/m-ant")])
@pytest.mark.asyncio
async def test_a_client_gone_before_the_first_event_is_recorded(served: Served, model: str, deployment: str) -> None:
    response = await served.surface.messages(served.request(body(model=model, stream=True)))
    assert response.stream is not None
    await asyncio.wait_for(response.stream.aclose(), TIMEOUT)  # type: ignore[attr-defined]
    assert served.records()[-1]["outcome"] == "client_disconnected"
    assert served.runtime.table.deployments[deployment].health.inflight == 0


@pytest.mark.asyncio
async def test_a_request_only_anthropic_can_serve_goes_to_the_anthropic_deployment(served: Served) -> None:
    payload = body(model="m-both", tools=[{"type": "web_search_20250305", "name": "web_search"}])
    response = await served.surface.messages(served.request(payload))
    assert (response.status, dict(response.headers)["x-labgate-provider"]) == (200, "ant")
    assert served.oai.requests == []
    assert served.ant.requests[-1].body == {**payload, "model": "m-both"}


@pytest.mark.asyncio
async def test_a_request_only_anthropic_can_serve_is_refused_by_openai_only_routes(served: Served) -> None:
    payload = body(model="m-oai", tools=[{"type": "web_search_20250305", "name": "web_search"}])
    response = await served.surface.messages(served.request(payload))
    assert response.status == 400
    assert await body_of(response) == {"type": "error", "error": {"type": "invalid_request_error", "message": (
        "This request uses the 'web_search_20250305' tool (tools.0), which only an 'anthropic' provider can serve, "
        "and no deployment of this model is one (provider 'oai' does not serve messages).")},
        "request_id": dict(response.headers)["x-request-id"]}
    assert served.oai.requests == []


@pytest.mark.asyncio
async def test_every_upstream_overloaded_is_a_529_overloaded_error(served: Served) -> None:
    served.oai.set(Behaviour(fault=Status(503)))
    served.ant.set(Behaviour(fault=Status(529)))
    response = await served.surface.messages(served.request(body(model="m-both")))
    payload = await body_of(response)
    assert (response.status, payload["error"]["type"]) == (529, "overloaded_error")
    assert dict(response.headers)["x-labgate-attempts"] == "2"


@pytest.mark.asyncio
async def test_errors_use_anthropics_envelope(served: Served) -> None:
    response = await served.surface.messages(served.request(body(model="m-nope")))
    assert (response.status, (await body_of(response))["error"]["type"]) == (404, "not_found_error")
    response = await served.surface.messages(served.request(body(), **{"x-api-key": "wrong"}))
    assert (response.status, (await body_of(response))["error"]["type"]) == (401, "authentication_error")
    response = await served.surface.messages(served.request(body(model="m-oai", max_tokens=None)))
    assert (response.status, (await body_of(response))["error"]) == (
        400, {"type": "invalid_request_error", "message": "max_tokens: Field required"})
    assert ("x-should-retry", "false") in response.headers


@pytest.mark.asyncio
async def test_a_bearer_token_is_accepted_too(served: Served) -> None:
    request = served.request(body(model="m-oai"))
    request.headers = {"authorization": "Bearer sk-gw"}
    assert (await served.surface.messages(request)).status == 200


@pytest.mark.asyncio
async def test_count_tokens(served: Served) -> None:
    response = await served.surface.count_tokens(served.request(
        {"model": "m-oai", "messages": [{"role": "user", "content": "Hello there, Claude"}]},
        path="/v1/messages/count_tokens"))
    assert (response.status, await body_of(response)) == (200, {"input_tokens": 5 + 4})
    response = await served.surface.count_tokens(served.request(body(model="m-nope", max_tokens=...)))
    assert (response.status, (await body_of(response))["error"]["type"]) == (404, "not_found_error")
    response = await served.surface.count_tokens(served.request(body(), **{"x-api-key": "wrong"}))
    assert response.status == 401
    assert served.oai.requests == served.ant.requests == []


@pytest.mark.asyncio
async def test_a_tool_call_from_an_openai_engine_is_a_tool_use_block(served: Served) -> None:
    payload = body(model="m-oai", tools=[{"name": "f", "input_schema": {"type": "object"}}],
                   messages=[{"role": "user", "content": "find x"}])
    response = await served.surface.messages(served.request(payload))
    assert await body_of(response) == {
        "id": "msg_sim1", "type": "message", "role": "assistant", "model": "m-oai",
        "content": [{"type": "tool_use", "id": "call_sim1_0", "name": "f", "input": {"query": "find x"}}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 2, "output_tokens": 3}}


@pytest.mark.asyncio
async def test_wrong_method_on_messages_gets_the_anthropic_envelope() -> None:
    from labgate.server.app import build_app

    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9", "models": ["m"]}})
    app = build_app(Gateway(Runtime.build(config, access_log=AccessLog(io.BytesIO()))))
    response = await app(Request("GET", "/v1/messages", "", {"x-request-id": "r-405"}, b""))
    assert response.status == 405
    headers = dict(response.headers)
    assert (headers["x-client-request-id"], headers["x-request-id"][:4]) == ("r-405", "req_")
    assert orjson.loads(response.body) == {
        "type": "error", "request_id": headers["x-request-id"],
        "error": {"type": "invalid_request_error", "message": "GET is not allowed on /v1/messages; use POST."}}
