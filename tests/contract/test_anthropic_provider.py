"""The ``openai`` SDK against labgate, routed to an ``anthropic``-type provider (the Anthropic simulator).

The client speaks OpenAI chat completions; the upstream receives Anthropic
Messages (read back from the simulator) and its answers come back translated.
The official ``anthropic`` SDK is pointed at the simulator once, as a check
that the simulator speaks the real protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import anthropic
import openai
import pytest

from labgate.testing import Behaviour, RateLimit, Status, sim_text

pytestmark = pytest.mark.timeout(20)

MODEL = "m-anthropic"
SYSTEM = {"role": "system", "content": "Answer briefly."}  # 2 words
USER = {"role": "user", "content": "find some cats"}  # 3 words
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
CLAUDE_SEARCH = {"name": "search", "description": "Search the web.",
                 "input_schema": SEARCH["function"]["parameters"]}


@pytest.fixture(scope="module")
def client(session_gateway: Any) -> Iterator[openai.OpenAI]:
    """One client for the module (building one costs ~60 ms); tests still take ``gateway`` or ``sims``."""
    with openai.OpenAI(base_url=session_gateway.url + "/v1", api_key=session_gateway.key, max_retries=0,
                       timeout=10) as sdk:
        yield sdk


def completion(message: dict[str, Any], finish: str, prompt: int, completion_tokens: int) -> dict[str, Any]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
             "total_tokens": prompt + completion_tokens}
    return {"id": ANY, "object": "chat.completion", "created": ANY, "model": MODEL, "usage": usage,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}


def text(value: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": value}]


# --- the simulator speaks the real protocol -------------------------------------------------------------


def test_anthropic_sdk_against_the_simulator(sims: Any) -> None:
    with anthropic.Anthropic(base_url=sims.anthropic.url, api_key=sims.anthropic_key, max_retries=0,
                             timeout=10) as claude:
        message = claude.messages.create(model=MODEL, max_tokens=64, system="Answer briefly.",
                                         messages=[{"role": "user", "content": "find some cats"}])
        with claude.messages.stream(model=MODEL, max_tokens=3,
                                    messages=[{"role": "user", "content": "find some cats"}]) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert message.to_dict() == {
        "id": ANY, "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "text", "text": sim_text(8)}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 8}}
    assert (streamed, final.stop_reason, final.usage.output_tokens) == (sim_text(3), "max_tokens", 3)


# --- chat, translated -----------------------------------------------------------------------------------------


def test_chat_with_a_system_prompt(client: openai.OpenAI, sims: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[SYSTEM, USER])
    assert raw.parse().to_dict() == completion({"role": "assistant", "content": sim_text(8)}, "stop", 5, 8)
    assert (raw.headers["x-labgate-provider"], raw.headers["x-labgate-deployment"]) == ("anthropic", "anthropic/"
                                                                                        + MODEL)
    (received,) = sims.received(MODEL)
    assert received.body == {"model": MODEL, "max_tokens": 4096, "system": "Answer briefly.",
                             "messages": [{"role": "user", "content": text("find some cats")}]}
    assert (received.path, received.headers["x-api-key"], received.headers["anthropic-version"]) == (
        "/v1/messages", sims.anthropic_key, "2023-06-01")
    assert "authorization" not in received.headers  # the client's gateway key stays at the gateway


def test_system_and_developer_prompts_are_joined(client: openai.OpenAI, sims: Any) -> None:
    developer = {"role": "developer", "content": [{"type": "text", "text": "Use lists."}]}
    client.chat.completions.create(model=MODEL, messages=[SYSTEM, developer, USER])
    assert sims.bodies(MODEL)[0]["system"] == "Answer briefly.\n\nUse lists."


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream(client: openai.OpenAI, sims: Any, include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(client.chat.completions.create(model=MODEL, messages=[SYSTEM, USER], stream=True, **options))
    deltas = [(c.to_dict()["choices"][0]["delta"], c.choices[0].finish_reason) for c in chunks if c.choices]
    assert deltas == ([({"role": "assistant", "content": ""}, None)]
                      + [({"content": f" sim{i}"}, None) for i in range(1, 9)] + [({}, "stop")])
    usage = [c.usage.to_dict() for c in chunks if c.usage is not None]
    assert usage == ([{"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}] if include_usage else [])
    assert sims.bodies(MODEL)[0]["stream"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence(client: openai.OpenAI, sims: Any, stream: bool) -> None:
    if stream:
        chunks = list(client.chat.completions.create(model=MODEL, messages=[USER], stop=["sim3"], stream=True))
        got = ("".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason)
    else:
        reply = client.chat.completions.create(model=MODEL, messages=[USER], stop=["sim3"])
        got = (reply.choices[0].message.content, reply.choices[0].finish_reason)
    assert got == (" sim1 sim2 ", "stop")
    assert sims.bodies(MODEL)[0]["stop_sequences"] == ["sim3"]


def test_max_tokens_and_sampling(client: openai.OpenAI, sims: Any) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=[USER], max_completion_tokens=3,
                                           temperature=1.5, top_p=0.9, user="u-1")
    assert reply.to_dict() == completion({"role": "assistant", "content": sim_text(3)}, "length", 3, 3)
    # Anthropic's temperature is 0..1: values above are clamped
    assert sims.bodies(MODEL) == [{"model": MODEL, "max_tokens": 3, "messages": [{"role": "user",
                                   "content": text("find some cats")}], "temperature": 1.0, "top_p": 0.9,
                                   "metadata": {"user_id": "u-1"}}]


# --- tools, both ways -----------------------------------------------------------------------------------------


def test_two_turn_tool_loop(client: openai.OpenAI, sims: Any) -> None:
    first = client.chat.completions.create(model=MODEL, messages=[USER], tools=[SEARCH], tool_choice="required")
    (call,) = first.choices[0].message.tool_calls
    assert first.to_dict() == completion(
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call.id, "type": "function",
            "function": {"name": "search", "arguments": '{"query":"find some cats"}'}}]},
        "tool_calls", 3, 3)
    assert call.id.startswith("toolu_sim")

    history = [USER, {"role": "assistant", "content": None, "tool_calls": [call.to_dict()]},
               {"role": "tool", "tool_call_id": call.id, "content": "3 cats nearby"}]
    final = client.chat.completions.create(model=MODEL, messages=history, tools=[SEARCH])
    assert final.to_dict() == completion({"role": "assistant", "content": sim_text(8)}, "stop", 6, 8)

    asked, answered = sims.bodies(MODEL)
    assert asked == {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user",
                     "content": text("find some cats")}], "tools": [CLAUDE_SEARCH], "tool_choice": {"type": "any"}}
    assert answered["messages"] == [
        {"role": "user", "content": text("find some cats")},
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": "search",
                                           "input": {"query": "find some cats"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "3 cats nearby"}]}]


@pytest.mark.asyncio
async def test_tool_calls_stream(gateway: Any, faults: Any, sims: Any) -> None:
    faults.set(sims.anthropic, Behaviour(parallel_tool_calls=2), model=MODEL)
    lookup = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0,
                                  timeout=10) as sdk:
        stream = await sdk.chat.completions.create(model=MODEL, messages=[USER], tools=[SEARCH, lookup],
                                                   stream=True)
        chunks = [chunk async for chunk in stream]
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for piece in chunk.choices[0].delta.tool_calls or ():
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            call["name"] += piece.function.name or ""
            call["arguments"] += piece.function.arguments or ""
    assert calls == {i: {"id": ANY, "name": name, "arguments": '{"query":"find some cats"}'}
                     for i, name in enumerate(["search", "lookup"])}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    (asked,) = sims.bodies(MODEL)
    assert (asked["tools"], asked.get("tool_choice")) == (
        [CLAUDE_SEARCH, {"name": "lookup", "input_schema": {"type": "object"}}], None)


# --- errors ---------------------------------------------------------------------------------------------------


def test_upstream_rejection_is_our_envelope_and_not_retried(client: openai.OpenAI, faults: Any, sims: Any) -> None:
    faults.fault("anthropic", Status(400, "messages.0.content: text blocks must be non-empty"))
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="fb-anthropic", messages=[USER])
    assert raised.value.body == {
        "message": "provider 'anthropic' answered 400: messages.0.content: text blocks must be non-empty",
        "type": "invalid_request_error", "param": None, "code": "upstream_rejected"}
    headers = raised.value.response.headers
    assert (headers["x-should-retry"], headers["x-labgate-attempts"]) == ("false", "1")
    assert sims.bodies("m-backup") == []  # the same body would fail everywhere


@pytest.mark.parametrize(("fault", "status", "kind", "message"), [
    (Status(529, "Overloaded"), 502, "api_error", "provider 'anthropic' answered 529: Overloaded"),
    (Status(500, "Internal server error"), 502, "api_error",
     "provider 'anthropic' answered 500: Internal server error"),
    (RateLimit(3), 429, "rate_limit_error", "provider 'anthropic' answered 429: Rate limit reached (simulated)."),
], ids=["overloaded", "api_error", "rate_limit"])
def test_upstream_failure_is_our_envelope(client: openai.OpenAI, faults: Any, fault: Any, status: int, kind: str,
                                          message: str) -> None:
    faults.fault("anthropic", fault)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=MODEL, messages=[USER])
    assert (raised.value.status_code, raised.value.body) == (status, {
        "message": f"All 1 attempt(s) failed: anthropic/{MODEL}: {message}", "type": kind, "param": None,
        "code": "all_attempts_failed"})
    assert raised.value.response.json()["request_id"] == raised.value.request_id


@pytest.mark.parametrize(("options", "param", "message"), [
    ({"n": 2}, "n", "this provider returns one choice; 'n' must be 1"),
    ({"logprobs": True}, "logprobs", "this provider does not return log probabilities"),
    ({"response_format": {"type": "json_object"}}, "response_format.type",
     "this provider has no JSON-object mode: send response_format type 'json_schema' with a schema "
     "(Anthropic structured outputs)"),
], ids=["n", "logprobs", "response_format"])
def test_what_anthropic_cannot_honour_is_refused(client: openai.OpenAI, sims: Any, options: dict[str, Any],
                                                 param: str, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=[USER], **options)
    assert raised.value.body == {"message": message, "type": "invalid_request_error", "param": param,
                                 "code": "invalid_request"}
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert sims.bodies(MODEL) == []
