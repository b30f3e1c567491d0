"""The response cache seen by the official SDKs: a hit carries the same content as the miss that filled it.

For the openai SDK (chat and completions, through an OpenAI-compatible upstream) and the anthropic
SDK (``/v1/messages`` through an Anthropic upstream, passed through, and through an OpenAI-compatible
one, translated): whole answers are byte-for-byte the same; streams carry the same text, tool calls,
stop reason and usage; a streamed miss fills the entry a whole request then hits, and back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import LoopThread, config_from

KEYS = {"LABGATE_CACHE_OPENAI_KEY": "sk-cache-openai", "LABGATE_CACHE_ANTHROPIC_KEY": "sk-ant-cache"}
BEHAVIOUR = Behaviour(tokens_per_s=0)
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "find a thing",
                                           "parameters": {"type": "object", "properties": {
                                               "query": {"type": "string"}}}}}]
ANTHROPIC_TOOLS = [{"name": "lookup", "description": "find a thing",
                    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]


class Stack:
    def __init__(self, sims: dict[str, Simulator], gateway: RunningGateway, thread: LoopThread) -> None:
        self.sims, self.gateway, self.thread = sims, gateway, thread
        self.openai = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=10)
        self.anthropic = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=10)

    def calls(self) -> int:
        return sum(1 for sim in self.sims.values() for r in sim.requests if r.method == "POST")

    def settle(self) -> None:
        """Wait for the background store of the last miss (the gateway runs on its own thread)."""
        cache = self.gateway.gateway.runtime.cache
        assert cache is not None
        self.thread.run(cache.drain())


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in KEYS.items():
            env.setenv(name, value)
        with Simulator(BEHAVIOUR, api_key=KEYS["LABGATE_CACHE_OPENAI_KEY"]).run_in_thread() as oai, \
                Simulator(BEHAVIOUR, api_key=KEYS["LABGATE_CACHE_ANTHROPIC_KEY"]).run_in_thread() as ant:
            config = config_from({
                "local": {"type": "openai_compatible", "base_url": oai.url + "/v1",
                          "api_key_env": "LABGATE_CACHE_OPENAI_KEY", "models": ["qwen"]},
                "cloud": {"type": "anthropic", "base_url": ant.url, "api_key_env": "LABGATE_CACHE_ANTHROPIC_KEY",
                          "models": ["claude"]},
            }, gateway={"cache": {"backend": "memory"}, "store": {"capture": "none"}, "logging": {"requests": False}})
            thread = LoopThread()
            running = thread.run(start_gateway(config, host="127.0.0.1", port=0))
            try:
                yield Stack({"openai": oai, "anthropic": ant}, running, thread)
            finally:
                thread.run(running.stop(grace=2.0))
                thread.close()


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    for sim in stack.sims.values():
        sim.clear()
    return stack


_counter = iter(range(10**9))


def unique(text: str) -> str:
    """A prompt no other test sent (entries live as long as the module's gateway)."""
    return f"{text} #{next(_counter)}"


# ---------------------------------------------------------------- openai SDK


def chat_content(completion: Any) -> dict[str, Any]:
    message = completion.choices[0].message
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()]
    usage = completion.usage
    return {"text": message.content or "", "tool_calls": calls, "finish": completion.choices[0].finish_reason,
            "usage": (usage.prompt_tokens, usage.completion_tokens) if usage else None}


def chat_stream_content(stream: Any) -> dict[str, Any]:
    text, calls, finish, usage = "", {}, None, None
    for chunk in stream:
        if chunk.usage:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                slot = calls.setdefault(call.index, ["", "", ""])
                slot[0] += call.id or ""
                slot[1] += (call.function.name or "") if call.function else ""
                slot[2] += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    return {"text": text, "tool_calls": [tuple(calls[i]) for i in sorted(calls)], "finish": finish, "usage": usage}


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
def test_openai_chat_whole_miss_then_hit_and_replayed_stream(fresh: Stack, tools: bool) -> None:
    kwargs: dict[str, Any] = {"model": "qwen", "temperature": 0,
                              "messages": [{"role": "user", "content": unique("hello there")}]}
    if tools:
        kwargs["tools"] = TOOLS
    miss = fresh.openai.chat.completions.with_raw_response.create(**kwargs)
    fresh.settle()
    hit = fresh.openai.chat.completions.with_raw_response.create(**kwargs)
    assert (miss.headers["x-labgate-cache"], hit.headers["x-labgate-cache"]) == ("miss", "hit")
    assert hit.http_response.content == miss.http_response.content  # byte for byte
    expected = chat_content(miss.parse())
    assert bool(expected["tool_calls"]) is tools
    streamed = chat_stream_content(fresh.openai.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert streamed == expected
    assert fresh.calls() == 1


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
def test_openai_chat_streamed_miss_then_streamed_and_whole_hits(fresh: Stack, tools: bool) -> None:
    kwargs: dict[str, Any] = {"model": "qwen", "temperature": 0,
                              "messages": [{"role": "user", "content": unique("stream me")}]}
    if tools:
        kwargs["tools"] = TOOLS
    options = {"stream": True, "stream_options": {"include_usage": True}}
    miss = chat_stream_content(fresh.openai.chat.completions.create(**kwargs, **options))
    fresh.settle()
    hit = chat_stream_content(fresh.openai.chat.completions.create(**kwargs, **options))
    assert hit == miss
    assert bool(miss["tool_calls"]) is tools and miss["usage"] is not None
    whole = fresh.openai.chat.completions.with_raw_response.create(**kwargs)
    assert whole.headers["x-labgate-cache"] == "hit"
    assert chat_content(whole.parse()) == miss
    assert fresh.calls() == 1


def test_openai_completions_hit_matches_miss(fresh: Stack) -> None:
    kwargs: dict[str, Any] = {"model": "qwen", "temperature": 0, "prompt": unique("once upon a time")}
    miss = fresh.openai.completions.with_raw_response.create(**kwargs)
    fresh.settle()
    hit = fresh.openai.completions.with_raw_response.create(**kwargs)
    assert hit.headers["x-labgate-cache"] == "hit"
    assert hit.http_response.content == miss.http_response.content
    text = "".join(c.choices[0].text for c in fresh.openai.completions.create(**kwargs, stream=True) if c.choices)
    assert text == miss.parse().choices[0].text
    assert fresh.calls() == 1


# ---------------------------------------------------------------- anthropic SDK


def message_content(message: Any) -> dict[str, Any]:
    return {"content": [b.model_dump() for b in message.content], "stop": message.stop_reason,
            "usage": (message.usage.input_tokens, message.usage.output_tokens), "id": message.id}


@pytest.mark.parametrize("model", ["claude", "qwen"], ids=["passthrough", "translated"])
@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
def test_anthropic_messages_whole_and_streamed(fresh: Stack, model: str, tools: bool) -> None:
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 64, "extra_body": {"temperature": 0},
                              "messages": [{"role": "user", "content": unique("hi claude")}]}
    if tools:
        kwargs["tools"] = ANTHROPIC_TOOLS
    miss = fresh.anthropic.messages.with_raw_response.create(**kwargs)
    fresh.settle()
    hit = fresh.anthropic.messages.with_raw_response.create(**kwargs)
    assert (miss.headers["x-labgate-cache"], hit.headers["x-labgate-cache"]) == ("miss", "hit")
    assert hit.http_response.content == miss.http_response.content
    expected = message_content(miss.parse())
    assert any(b["type"] == "tool_use" for b in expected["content"]) is tools
    with fresh.anthropic.messages.stream(**kwargs) as stream:
        replayed = message_content(stream.get_final_message())
    assert replayed == expected
    assert fresh.calls() == 1


@pytest.mark.parametrize("model", ["claude", "qwen"], ids=["passthrough", "translated"])
@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
def test_anthropic_streamed_miss_then_hits(fresh: Stack, model: str, tools: bool) -> None:
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 64, "extra_body": {"temperature": 0},
                              "messages": [{"role": "user", "content": unique("stream claude")}]}
    if tools:
        kwargs["tools"] = ANTHROPIC_TOOLS
    with fresh.anthropic.messages.stream(**kwargs) as stream:
        miss = message_content(stream.get_final_message())
    fresh.settle()
    with fresh.anthropic.messages.stream(**kwargs) as stream:
        hit = message_content(stream.get_final_message())
    assert hit == miss
    whole = fresh.anthropic.messages.with_raw_response.create(**kwargs)
    assert whole.headers["x-labgate-cache"] == "hit"
    assert message_content(whole.parse()) == miss
    assert fresh.calls() == 1
