"""The official ``openai`` SDK, sync and async, against labgate in front of the OpenAI-dialect simulator.

What the SDK gets back is compared whole (``to_dict()`` keeps exactly the
fields on the wire); what reached the upstream is read from the simulator's
recorded requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import openai
import pytest

from labgate.testing import Behaviour, Status, embedding, embedding_base64, sim_text

pytestmark = pytest.mark.timeout(20)

USER = [{"role": "user", "content": "find some cats"}]  # 3 prompt tokens
USAGE = {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def client(session_gateway: Any) -> Iterator[openai.OpenAI]:
    """One client for the module (building one costs ~60 ms); tests still take ``gateway`` or ``sims``."""
    with openai.OpenAI(base_url=session_gateway.url + "/v1", api_key=session_gateway.key, max_retries=0,
                       timeout=10) as sdk:
        yield sdk


def async_client(gateway: Any, **options: Any) -> openai.AsyncOpenAI:
    settings = {"api_key": gateway.key, "max_retries": 0, "timeout": 10, **options}
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", **settings)


def chat_completion(model: str, message: dict[str, Any], finish: str, usage: dict[str, int] = USAGE) -> dict:
    return {"id": ANY, "object": "chat.completion", "created": ANY, "model": model, "usage": usage,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}


def deltas(chunks: list[Any]) -> list[tuple[dict[str, Any], str | None]]:
    return [(c.to_dict()["choices"][0]["delta"], c.choices[0].finish_reason) for c in chunks if c.choices]


TEXT_DELTAS = ([({"role": "assistant", "content": ""}, None)] + [({"content": f" sim{i}"}, None) for i in range(1, 9)]
               + [({}, "stop")])


# --- chat -----------------------------------------------------------------------------------------


def test_chat(client: openai.OpenAI, sims: Any) -> None:
    reply = client.chat.completions.create(model="m-vllm", messages=USER)
    assert reply.to_dict() == chat_completion("m-vllm", {"role": "assistant", "content": sim_text(8)}, "stop")
    assert sims.bodies("m-vllm") == [{"model": "m-vllm", "messages": USER}]


@pytest.mark.asyncio
async def test_chat_async(gateway: Any) -> None:
    async with async_client(gateway) as sdk:
        reply = await sdk.chat.completions.create(model="m-openai", messages=USER)
    assert reply.to_dict() == chat_completion("m-openai", {"role": "assistant", "content": sim_text(8)}, "stop")


def test_chat_stream_hides_the_usage_chunk_the_gateway_asked_for(client: openai.OpenAI, sims: Any) -> None:
    chunks = list(client.chat.completions.create(model="m-vllm", messages=USER, stream=True))
    assert deltas(chunks) == TEXT_DELTAS
    assert [c.usage for c in chunks] == [None] * len(chunks)
    assert all(c.choices for c in chunks)
    # the gateway asks the upstream for usage (to record tokens) and keeps it from this client
    assert sims.bodies("m-vllm") == [{"model": "m-vllm", "messages": USER, "stream": True,
                                      "stream_options": {"include_usage": True}}]


@pytest.mark.asyncio
async def test_chat_stream_with_usage_async(gateway: Any, sims: Any) -> None:
    async with async_client(gateway) as sdk:
        stream = await sdk.chat.completions.create(model="m-ollama", messages=USER, stream=True,
                                                   stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert deltas(chunks) == TEXT_DELTAS
    assert (chunks[-1].choices, chunks[-1].usage.to_dict()) == ([], USAGE)
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert sims.bodies("m-ollama")[0]["stream_options"] == {"include_usage": True}


def test_tool_call_comes_back_intact(client: openai.OpenAI, sims: Any) -> None:
    choice = {"type": "function", "function": {"name": "search"}}
    reply = client.chat.completions.create(model="m-lmstudio", messages=USER, tools=[SEARCH, LOOKUP],
                                           tool_choice=choice)
    call = {"id": ANY, "type": "function",
            "function": {"name": "search", "arguments": '{"query":"find some cats"}'}}
    assert reply.to_dict() == chat_completion(
        "m-lmstudio", {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls",
        {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    assert reply.choices[0].message.tool_calls[0].id.startswith("call_sim")
    assert sims.bodies("m-lmstudio") == [{"model": "m-lmstudio", "messages": USER, "tools": [SEARCH, LOOKUP],
                                          "tool_choice": choice}]


@pytest.mark.asyncio
async def test_tool_call_stream_reassembles_the_arguments(gateway: Any, faults: Any, sims: Any) -> None:
    faults.set(sims.openai, Behaviour(parallel_tool_calls=2), model="m-vllm")
    async with async_client(gateway) as sdk:
        stream = await sdk.chat.completions.create(model="m-vllm", messages=USER, tools=[SEARCH, LOOKUP],
                                                   tool_choice="auto", stream=True)
        chunks = [chunk async for chunk in stream]
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for piece in chunk.choices[0].delta.tool_calls or ():
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            call["name"] += piece.function.name or ""
            call["arguments"] += piece.function.arguments or ""
    assert calls == {i: {"id": ANY, "name": name, "arguments": '{"query":"find some cats"}'}
                     for i, name in enumerate(["search", "lookup"])}
    assert [calls[0]["id"][:8], calls[1]["id"][:8]] == ["call_sim", "call_sim"]
    assert [c.choices[0].finish_reason for c in chunks][-1] == "tool_calls"


@pytest.mark.parametrize("response_format", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "reply", "strict": True, "schema": {
        "type": "object", "properties": {"reply": {"type": "string"}}, "required": ["reply"]}}},
], ids=["json_object", "json_schema"])
def test_response_format(client: openai.OpenAI, sims: Any, response_format: dict[str, Any]) -> None:
    reply = client.chat.completions.create(model="m-openai_compatible", messages=USER,
                                           response_format=response_format)
    assert json.loads(reply.choices[0].message.content) == {"reply": sim_text(8).strip()}
    assert sims.bodies("m-openai_compatible") == [{"model": "m-openai_compatible", "messages": USER,
                                                   "response_format": response_format}]


@pytest.mark.parametrize("model", ["m-openai", "m-vllm", "m-llama_cpp", "m-ollama", "m-lmstudio"])
def test_image_part_reaches_the_upstream_unchanged(client: openai.OpenAI, sims: Any, model: str) -> None:
    messages = [{"role": "system", "content": "Describe images."},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is in this picture"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==",
                                                        "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]
    reply = client.chat.completions.create(model=model, messages=messages)
    assert reply.choices[0].message.content == sim_text(8)
    assert sims.bodies(model) == [{"model": model, "messages": messages}]


# --- completions and embeddings -------------------------------------------------------------------------


def test_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="m-vllm", prompt="find some cats")
    assert reply.to_dict() == {
        "id": ANY, "object": "text_completion", "created": ANY, "model": "m-vllm", "usage": USAGE,
        "choices": [{"text": sim_text(8), "index": 0, "logprobs": None, "finish_reason": "stop"}]}


@pytest.mark.asyncio
@pytest.mark.parametrize("include_usage", [False, True])
async def test_completion_stream(gateway: Any, include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    async with async_client(gateway) as sdk:
        stream = await sdk.completions.create(model="m-llama_cpp", prompt="find some cats", stream=True, **options)
        chunks = [chunk async for chunk in stream]
    texts = [(c.choices[0].text, c.choices[0].finish_reason) for c in chunks if c.choices]
    assert texts == [(f" sim{i}", None) for i in range(1, 9)] + [("", "stop")]
    usage = [c.usage.to_dict() for c in chunks if c.usage is not None]
    assert usage == ([USAGE] if include_usage else [])


@pytest.mark.parametrize("encoding_format", ["float", "base64", None], ids=["float", "base64", "sdk-default"])
def test_embeddings(client: openai.OpenAI, sims: Any, encoding_format: str | None) -> None:
    texts = ["find some cats", "a dog"]
    options = {"encoding_format": encoding_format} if encoding_format else {}
    result = client.embeddings.create(model="m-openai", input=texts, **options)
    # asked for explicitly, base64 stays a string; by default the SDK asks for it and decodes it
    encode = embedding_base64 if encoding_format == "base64" else embedding
    assert [(d.index, d.embedding) for d in result.data] == [(i, encode(t, 16)) for i, t in enumerate(texts)]
    assert (result.model, result.usage.to_dict()) == ("m-openai", {"prompt_tokens": 5, "total_tokens": 5})
    assert sims.bodies("m-openai") == [{"model": "m-openai", "input": texts,
                                        "encoding_format": encoding_format or "base64"}]


@pytest.mark.asyncio
async def test_embeddings_dimensions_async(gateway: Any) -> None:
    async with async_client(gateway) as sdk:
        result = await sdk.embeddings.create(model="m-ollama", input="find some cats", dimensions=8)
    assert [d.embedding for d in result.data] == [embedding("find some cats", 8)]


# --- models ---------------------------------------------------------------------------------------------

QWEN = {"id": "qwen-local", "object": "model", "created": ANY, "owned_by": "ollama", "provider": "ollama",
        "deployments": ["ollama/qwen2.5:7b"], "fallbacks": [], "tags": ["local", "code"],
        "capabilities": ["chat", "tools"], "context_length": 32768}


def test_models_list(client: openai.OpenAI) -> None:
    models = {m.id: m.to_dict() for m in client.models.list()}
    types = ["openai_compatible", "openai", "vllm", "llama_cpp", "ollama", "lmstudio", "anthropic"]
    assert sorted(models) == sorted([f"m-{t}" for t in types] + [f"fb-{t}" for t in types]
                                    + ["qwen2.5:7b", "qwen-local", "m-backup", "house-model"])
    assert models["qwen-local"] == QWEN
    assert models["fb-anthropic"] == {
        "id": "fb-anthropic", "object": "model", "created": ANY, "owned_by": "anthropic", "provider": "anthropic",
        "deployments": ["anthropic/m-anthropic"], "fallbacks": ["backup/m-backup"], "tags": [],
        "capabilities": [], "context_length": None}


def test_models_retrieve(client: openai.OpenAI) -> None:
    assert client.models.retrieve("qwen-local").to_dict() == QWEN
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("qwen-locl")
    assert raised.value.body == {
        "message": "The model 'qwen-locl' does not exist or is not routed by this gateway. Did you mean 'qwen-local'?",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


# --- headers, routing and quirks ----------------------------------------------------------------------


def test_raw_response_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fb-vllm", messages=USER,
                                                           extra_headers={"x-request-id": "sdk-contract-1"})
    assert {k: raw.headers.get(k) for k in ("x-client-request-id", "x-labgate-provider", "x-labgate-deployment",
                                            "x-labgate-attempts")} == {
        "x-client-request-id": "sdk-contract-1", "x-labgate-provider": "vllm", "x-labgate-deployment": "vllm/m-vllm",
        "x-labgate-attempts": "1"}
    assert raw.headers["x-request-id"].startswith("req_")  # labgate's own id, never the client's
    assert raw.parse().choices[0].message.content == sim_text(8)


def test_streaming_response_headers(client: openai.OpenAI, faults: Any) -> None:
    faults.fault("llama_cpp", Status(503))
    with client.chat.completions.with_streaming_response.create(model="fb-llama_cpp", messages=USER,
                                                                stream=True) as raw:
        assert {k: raw.headers.get(k) for k in ("x-labgate-provider", "x-labgate-deployment",
                                                "x-labgate-attempts")} == {
            "x-labgate-provider": "backup", "x-labgate-deployment": "backup/m-backup", "x-labgate-attempts": "2"}
        assert raw.headers["x-request-id"].startswith("req_")
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text == "from the backup"


@pytest.mark.parametrize(("model", "upstream", "sent"), [
    # Ollama and LM Studio read only max_tokens; OpenAI-only parameters are dropped
    ("qwen-local", "qwen2.5:7b", {"max_tokens": 3, "user": "u-1"}),
    ("m-lmstudio", "m-lmstudio", {"max_tokens": 3, "user": "u-1"}),
    # llama.cpp honours max_completion_tokens itself; it ignores store/metadata/user
    ("m-llama_cpp", "m-llama_cpp", {"max_completion_tokens": 3}),
    # vLLM: store/service_tier dropped; reached through an exact_matches `model:` rewrite
    ("house-model", "m-vllm", {"max_completion_tokens": 3, "metadata": {"team": "lab"}, "user": "u-1"}),
    # OpenAI itself gets everything as sent
    ("m-openai", "m-openai", {"max_completion_tokens": 3, "store": True, "metadata": {"team": "lab"},
                              "user": "u-1"}),
], ids=["ollama-alias", "lmstudio", "llama_cpp", "vllm-exact-match", "openai"])
def test_quirks_reach_the_upstream(client: openai.OpenAI, sims: Any, model: str, upstream: str,
                                   sent: dict[str, Any]) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=USER, max_completion_tokens=3, store=True, metadata={"team": "lab"}, user="u-1")
    reply = raw.parse()
    assert (reply.model, reply.choices[0].message.content, reply.choices[0].finish_reason) == (
        upstream, sim_text(3), "length")
    assert sims.bodies(upstream) == [{"model": upstream, "messages": USER, **sent}]
    assert raw.headers["x-labgate-deployment"].endswith("/" + upstream)


def test_upstream_gets_its_own_key_never_the_clients(client: openai.OpenAI, sims: Any) -> None:
    client.chat.completions.create(model="m-openai", messages=USER)
    (received,) = sims.received("m-openai")
    assert received.headers["authorization"] == f"Bearer {sims.openai_key}"
    assert "x-api-key" not in received.headers


def test_base_url_without_v1(gateway: Any) -> None:
    with openai.OpenAI(base_url=gateway.url, api_key=gateway.key, max_retries=0, timeout=10) as sdk:
        assert sdk.chat.completions.create(model="m-vllm", messages=USER).choices[0].message.content == sim_text(8)
        assert "m-vllm" in {m.id for m in sdk.models.list()}


# --- errors and retries ----------------------------------------------------------------------------------


def test_errors_become_the_sdks_exceptions(client: openai.OpenAI, gateway: Any) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="m-vllm", messages=USER, temperature=7)
    assert bad.value.body == {"message": "'temperature' must be a number between 0 and 2; got 7.",
                              "type": "invalid_request_error", "param": "temperature", "code": "invalid_request"}
    assert bad.value.request_id == bad.value.response.headers["x-request-id"]

    with (openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0) as stranger,
          pytest.raises(openai.AuthenticationError) as denied):
        stranger.chat.completions.create(model="m-vllm", messages=USER)
    assert denied.value.body == {"message": "Incorrect API key provided.", "type": "authentication_error",
                                 "param": None, "code": "invalid_api_key"}


def test_sdk_retries_a_retryable_gateway_error(gateway: Any, faults: Any, sims: Any) -> None:
    faults.fault("vllm", Status(503), fail_first_n=1)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=1, timeout=10) as sdk:
        reply = sdk.chat.completions.create(model="m-vllm", messages=USER)
    assert reply.choices[0].message.content == sim_text(8)
    assert len(sims.bodies("m-vllm")) == 2  # the 502 had no x-should-retry: false, so the SDK tried again
