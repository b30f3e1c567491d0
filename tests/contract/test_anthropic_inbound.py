"""The official ``anthropic`` SDK against labgate's ``/v1/messages``, in front of both upstream dialects.

Every scenario runs twice: routed to an OpenAI-dialect upstream (the request
and the answer are translated) and to an ``anthropic`` provider (pass-through:
the simulator must receive the client's own body with only ``model``
changed). Clients use the public names ``qwen`` and ``claude``; the upstreams
know them as ``qwen-upstream`` and ``claude-upstream``. The bodies the SDK
sends are captured with an httpx event hook, so "the client's body" is what
went on the wire, not what the test meant to send.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import orjson
import pytest

from labgate.server.serve import RunningGateway
from labgate.testing import Behaviour, Received, Simulator, Status, sim_text
from labgate.testing.gateway import config_from, gateway_in_thread

pytestmark = pytest.mark.timeout(30)

GATEWAY_KEY = "sk-labgate-inbound"
KEYS = {"LABGATE_INBOUND_MASTER_KEY": GATEWAY_KEY, "LABGATE_INBOUND_OPENAI_KEY": "sk-sim-openai",
        "LABGATE_INBOUND_ANTHROPIC_KEY": "sk-ant-sim"}
BEHAVIOUR = Behaviour(completion_tokens=4, parallel_tool_calls=2)
# dialect of the upstream → (public model name, the upstream's name for it)
MODELS = {"openai": ("qwen", "qwen-upstream"), "anthropic": ("claude", "claude-upstream")}
DIALECTS = pytest.mark.parametrize("dialect", list(MODELS))
WEATHER = {"name": "get_weather", "description": "Current weather in a city.",
           "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}
TIME = {"name": "get_time", "description": "Local time in a city.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


@dataclass
class Stack:
    """Two simulators, a gateway in front of them, and the bodies the SDK clients sent."""

    sims: dict[str, Simulator]
    gateway: RunningGateway
    sent: list[bytes] = field(default_factory=list)

    def client(self, *, api_key: str | None = GATEWAY_KEY, **options: Any) -> anthropic.Anthropic:
        http = anthropic.DefaultHttpxClient(event_hooks={"request": [lambda r: self.sent.append(r.read())]})
        return anthropic.Anthropic(base_url=self.gateway.url, api_key=api_key, max_retries=0, timeout=10,
                                   http_client=http, **options)

    def async_client(self) -> anthropic.AsyncAnthropic:
        async def capture(request: Any) -> None:  # the request object of the SDK's own HTTP client
            self.sent.append(await request.aread())
        http = anthropic.DefaultAsyncHttpxClient(event_hooks={"request": [capture]})
        return anthropic.AsyncAnthropic(base_url=self.gateway.url, api_key=GATEWAY_KEY, max_retries=0, timeout=10,
                                        http_client=http)

    def received(self, dialect: str) -> list[Received]:
        return [r for r in self.sims[dialect].requests if r.path.endswith(("/messages", "/chat/completions"))]

    def assert_passed_through(self, dialect: str, count: int) -> None:
        """Pass-through: each of the last ``count`` bodies reached the upstream with only ``model`` changed."""
        if dialect != "anthropic":
            return
        upstream = [r.body for r in self.received(dialect)[-count:]]
        expected = [{**orjson.loads(raw), "model": MODELS[dialect][1]} for raw in self.sent[-count:]]
        assert sorted(upstream, key=_key) == sorted(expected, key=_key)  # concurrent requests may arrive in any order


def _key(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in KEYS.items():
            env.setenv(name, value)
        with Simulator(BEHAVIOUR, api_key=KEYS["LABGATE_INBOUND_OPENAI_KEY"]).run_in_thread() as oai, \
                Simulator(BEHAVIOUR, api_key=KEYS["LABGATE_INBOUND_ANTHROPIC_KEY"]).run_in_thread() as ant:
            config = config_from({
                "local": {"type": "openai_compatible", "base_url": oai.url + "/v1",
                          "api_key_env": "LABGATE_INBOUND_OPENAI_KEY",
                          "models": [{"name": "qwen-upstream", "alias": "qwen"}]},
                "cloud": {"type": "anthropic", "base_url": ant.url, "api_key_env": "LABGATE_INBOUND_ANTHROPIC_KEY",
                          "models": [{"name": "claude-upstream", "alias": "claude"}]},
            }, gateway={"auth": {"master_key_env": "LABGATE_INBOUND_MASTER_KEY"}})
            with gateway_in_thread(config) as gateway:
                yield Stack({"openai": oai, "anthropic": ant}, gateway)


@pytest.fixture
def fresh(stack: Stack) -> Iterator[Stack]:
    for sim in stack.sims.values():
        sim.clear()
        sim.set(BEHAVIOUR)
    stack.sent.clear()
    yield stack
    for sim in stack.sims.values():
        sim.set(BEHAVIOUR)


def usage_of(message: Any) -> tuple[int, int]:
    return message.usage.input_tokens, message.usage.output_tokens


# ---------------------------------------------------------------- text


@DIALECTS
def test_sync_create(fresh: Stack, dialect: str) -> None:
    model, upstream = MODELS[dialect]
    with fresh.client() as claude:  # with_raw_response: the SDK's public view of the wire's headers
        raw = claude.messages.with_raw_response.create(model=model, max_tokens=64, system="Answer briefly.",
                                                       messages=[{"role": "user", "content": "name three cats"}],
                                                       metadata={"user_id": "u-1"}, extra_body={"temperature": 0.5})
        message = raw.parse()
    assert (message.type, message.role, message.model) == ("message", "assistant", upstream)
    assert [b.model_dump(exclude_none=True) for b in message.content] == [{"type": "text", "text": sim_text(4)}]
    assert (message.stop_reason, message.stop_sequence, usage_of(message)) == ("end_turn", None, (5, 4))
    # the id goes where Anthropic's API puts it (request-id), and is labgate's own
    assert re.fullmatch(r"req_[0-9a-f]{32}", raw.headers["request-id"]) and raw.headers["x-request-id"] == raw.headers[
        "request-id"]
    fresh.assert_passed_through(dialect, 1)
    if dialect == "openai":
        assert fresh.received(dialect)[-1].body == {
            "model": upstream, "max_completion_tokens": 64, "temperature": 0.5, "user": "u-1",
            "messages": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": "name three cats"}]}


@DIALECTS
def test_async_create(fresh: Stack, dialect: str) -> None:
    model, upstream = MODELS[dialect]

    async def ask() -> list[anthropic.types.Message]:
        async with fresh.async_client() as claude:
            return list(await asyncio.gather(*(
                claude.messages.create(model=model, max_tokens=2, messages=[{"role": "user", "content": f"q {i}"}])
                for i in range(3))))
    messages = asyncio.run(ask())
    assert [(m.content[0].text, m.stop_reason, m.model) for m in messages] == [  # type: ignore[union-attr]
        (sim_text(2), "max_tokens", upstream)] * 3
    fresh.assert_passed_through(dialect, 3)


@DIALECTS
def test_messages_stream(fresh: Stack, dialect: str) -> None:
    model, upstream = MODELS[dialect]
    with fresh.client() as claude, claude.messages.stream(
            model=model, max_tokens=64, messages=[{"role": "user", "content": "tell me a story"}]) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    raw = [e for e in events if e not in ("text", "input_json")]  # the SDK's derived events
    assert raw[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert raw[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert raw.count("content_block_delta") == 4
    assert final.content[0].text == sim_text(4)  # type: ignore[union-attr]
    assert (final.model, final.stop_reason, usage_of(final)) == (upstream, "end_turn", (4, 4))
    fresh.assert_passed_through(dialect, 1)


@DIALECTS
def test_async_stream_text(fresh: Stack, dialect: str) -> None:
    model = MODELS[dialect][0]

    async def read() -> tuple[str, str | None]:
        async with fresh.async_client() as claude, claude.messages.stream(
                model=model, max_tokens=3, messages=[{"role": "user", "content": "go"}]) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            return text, (await stream.get_final_message()).stop_reason
    assert asyncio.run(read()) == (sim_text(3), "max_tokens")
    fresh.assert_passed_through(dialect, 1)


@DIALECTS
def test_unicode_and_images_go_through(fresh: Stack, dialect: str) -> None:
    model = MODELS[dialect][0]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    content = [image, {"type": "text", "text": "Qu'est-ce que c'est ? 東京 👩‍👩‍👧"},
               {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]
    with fresh.client() as claude:
        message = claude.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": content}])
    assert message.content[0].text == sim_text(4)  # type: ignore[union-attr]
    fresh.assert_passed_through(dialect, 1)
    if dialect == "openai":
        assert fresh.received(dialect)[-1].body["messages"] == [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "text", "text": "Qu'est-ce que c'est ? 東京 👩‍👩‍👧"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]


@DIALECTS
def test_stop_sequences(fresh: Stack, dialect: str) -> None:
    model, _ = MODELS[dialect]
    with fresh.client() as claude:
        message = claude.messages.create(model=model, max_tokens=64, stop_sequences=[" sim3"],
                                         messages=[{"role": "user", "content": "count"}])
    assert message.content[0].text == sim_text(2)  # type: ignore[union-attr]
    # Lossy corner: an OpenAI-dialect upstream does not say that (or which) stop sequence matched.
    expected = ("stop_sequence", " sim3") if dialect == "anthropic" else ("end_turn", None)
    assert (message.stop_reason, message.stop_sequence) == expected
    fresh.assert_passed_through(dialect, 1)


# ---------------------------------------------------------------- tools


def tool_results(message: anthropic.types.Message, *, fail: str | None = None) -> list[dict[str, Any]]:
    """A tool_result for every tool_use of ``message``; the one named ``fail`` reports an error."""
    results = []
    for block in message.content:
        if block.type == "tool_use":
            if block.name == fail:
                results.append({"type": "tool_result", "tool_use_id": block.id, "is_error": True,
                                "content": [{"type": "text", "text": "service down"}]})
            else:
                results.append({"type": "tool_result", "tool_use_id": block.id, "content": f"{block.name}: ok"})
    return results


@DIALECTS
def test_a_tool_use_loop_of_two_rounds(fresh: Stack, dialect: str) -> None:
    model, _ = MODELS[dialect]
    conversation: list[Any] = [{"role": "user", "content": "weather and time in Paris"}]
    with fresh.client() as claude:
        first = claude.messages.create(model=model, max_tokens=128, tools=[WEATHER, TIME], messages=conversation)
        assert first.stop_reason == "tool_use"
        assert [(b.type, b.name, b.input) for b in first.content] == [  # type: ignore[union-attr]
            ("tool_use", "get_weather", {"query": "weather and time in Paris"}),
            ("tool_use", "get_time", {"query": "weather and time in Paris"})]
        conversation += [{"role": "assistant", "content": first.content},
                         {"role": "user", "content": tool_results(first, fail="get_time")}]
        second = claude.messages.create(model=model, max_tokens=128, tools=[WEATHER, TIME], messages=conversation)
        assert (second.stop_reason, second.content[0].text) == ("end_turn", sim_text(4))  # type: ignore[union-attr]

        conversation += [{"role": "assistant", "content": second.content},
                         {"role": "user", "content": "and in Rome, one tool only"}]
        third = claude.messages.create(model=model, max_tokens=128, tools=[WEATHER, TIME], messages=conversation,
                                       tool_choice={"type": "tool", "name": "get_weather"})
        assert [(b.name, b.input) for b in third.content] == [  # type: ignore[union-attr]
            ("get_weather", {"query": "and in Rome, one tool only"})]
        conversation += [{"role": "assistant", "content": third.content},
                         {"role": "user", "content": tool_results(third)}]
        fourth = claude.messages.create(model=model, max_tokens=128, tools=[WEATHER, TIME], messages=conversation)
        assert fourth.stop_reason == "end_turn"
    fresh.assert_passed_through(dialect, 4)
    if dialect == "openai":
        call_ids = [b.id for b in first.content]  # type: ignore[union-attr]
        assert fresh.received(dialect)[1].body["messages"][1:] == [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_ids[0], "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"query":"weather and time in Paris"}'}},
                {"id": call_ids[1], "type": "function",
                 "function": {"name": "get_time", "arguments": '{"query":"weather and time in Paris"}'}}]},
            {"role": "tool", "tool_call_id": call_ids[0], "content": "get_weather: ok"},
            {"role": "tool", "tool_call_id": call_ids[1], "content": "[tool error] service down"}]
        assert fresh.received(dialect)[2].body["tool_choice"] == {"type": "function",
                                                                  "function": {"name": "get_weather"}}


@DIALECTS
def test_a_streamed_tool_use_loop(fresh: Stack, dialect: str) -> None:
    model, _ = MODELS[dialect]
    conversation: list[Any] = [{"role": "user", "content": "weather and time"}]
    with fresh.client() as claude:
        with claude.messages.stream(model=model, max_tokens=128, tools=[WEATHER, TIME],
                                    messages=conversation) as stream:
            starts = [(e.index, e.content_block.type) for e in stream if e.type == "content_block_start"]
            first = stream.get_final_message()
        assert starts == [(0, "tool_use"), (1, "tool_use")]
        assert [(b.name, b.input) for b in first.content] == [  # type: ignore[union-attr]
            ("get_weather", {"query": "weather and time"}), ("get_time", {"query": "weather and time"})]
        conversation += [{"role": "assistant", "content": first.content},
                         {"role": "user", "content": tool_results(first)}]
        with claude.messages.stream(model=model, max_tokens=128, tools=[WEATHER, TIME],
                                    messages=conversation) as stream:
            answer = stream.get_final_message()
    assert (answer.stop_reason, answer.content[0].text) == ("end_turn", sim_text(4))  # type: ignore[union-attr]
    fresh.assert_passed_through(dialect, 2)


# ---------------------------------------------------------------- errors, auth, count_tokens


@DIALECTS
def test_an_overloaded_upstream_is_an_overloaded_error(fresh: Stack, dialect: str) -> None:
    model, _ = MODELS[dialect]
    fresh.sims[dialect].set(Behaviour(fault=Status(529 if dialect == "anthropic" else 503)))
    with fresh.client() as claude, pytest.raises(anthropic.OverloadedError) as info:
        claude.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_request_errors_in_anthropics_envelope(fresh: Stack) -> None:
    with fresh.client() as claude:
        with pytest.raises(anthropic.BadRequestError) as bad:
            claude.messages.create(model="qwen", max_tokens=8, messages=[{"role": "system", "content": "hi"}])
        with pytest.raises(anthropic.NotFoundError) as missing:
            claude.messages.create(model="gpt-99", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    with fresh.client(api_key="wrong") as claude, pytest.raises(anthropic.AuthenticationError) as denied:
        claude.messages.create(model="qwen", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert bad.value.body == {"type": "error", "request_id": bad.value.request_id, "error": {
        "type": "invalid_request_error", "message": "messages.0.role: Input should be 'user' or 'assistant'"}}
    assert (missing.value.status_code, missing.value.body["error"]["type"]) == (404, "not_found_error")  # type: ignore[index]
    assert denied.value.body["error"]["message"] == "Incorrect API key provided."  # type: ignore[index]
    assert fresh.received("openai") == fresh.received("anthropic") == []


def test_the_key_may_come_as_x_api_key(fresh: Stack) -> None:
    with fresh.client(api_key=None, default_headers={"x-api-key": GATEWAY_KEY}) as claude:
        message = claude.messages.create(model="qwen", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == sim_text(1)  # type: ignore[union-attr]


@DIALECTS
def test_count_tokens(fresh: Stack, dialect: str) -> None:
    model, _ = MODELS[dialect]
    with fresh.client() as claude:
        count = claude.messages.count_tokens(model=model, system="Be brief.", tools=[WEATHER],
                                             messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    assert 20 < count.input_tokens < 200
    assert fresh.received(dialect) == []  # an estimate: no upstream call
