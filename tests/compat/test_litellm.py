"""The LiteLLM SDK as a client: ``litellm.completion`` (OpenAI and Anthropic routes) and ``litellm.embedding``."""

from __future__ import annotations

import json
from typing import Any

import litellm
import pytest

from labgate.testing import sim_text

# the models of the compat gateway (conftest.py): an OpenAI-dialect one and an Anthropic one
MODELS = ("m-oai", "m-claude")
CLIENT_KEY = "sk-compat"
Compat = Any  # conftest.Compat (conftest is not importable under --import-mode=importlib)
WEATHER = {"type": "function", "function": {"name": "weather", "description": "The current weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CITY = {"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
        "required": ["name", "country"], "additionalProperties": False}


def route(compat: Compat, dialect: str, model: str) -> dict[str, Any]:
    """litellm's ``openai/`` route speaks chat completions, its ``anthropic/`` route the Messages API."""
    base = compat.v1 if dialect == "openai" else compat.url
    return {"model": f"{dialect}/{model}", "api_base": base, "api_key": CLIENT_KEY, "num_retries": 0, "timeout": 10}


CASES = [pytest.param(d, m, id=f"{d}-{m}") for d in ("openai", "anthropic") for m in MODELS]


@pytest.mark.parametrize(("dialect", "model"), CASES)
def test_chat(request: pytest.FixtureRequest, compat: Compat, dialect: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"LiteLLM SDK ({dialect}/)", "chat"))
    reply = litellm.completion(messages=[{"role": "user", "content": "hello"}], max_tokens=64,
                               **route(compat, dialect, model))
    assert reply.choices[0].message.content.strip() == sim_text(8).strip()
    assert reply.usage.completion_tokens == 8


@pytest.mark.parametrize(("dialect", "model"), CASES)
def test_stream(request: pytest.FixtureRequest, compat: Compat, dialect: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"LiteLLM SDK ({dialect}/)", "stream"))
    chunks = list(litellm.completion(messages=[{"role": "user", "content": "hello"}], max_tokens=64, stream=True,
                                     **route(compat, dialect, model)))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == sim_text(8).strip() and len(chunks) > 3


@pytest.mark.parametrize(("dialect", "model"), CASES)
def test_tools_round_trip(request: pytest.FixtureRequest, compat: Compat, dialect: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"LiteLLM SDK ({dialect}/)", "tools"))
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo"}]
    first = litellm.completion(messages=messages, tools=[WEATHER], max_tokens=64, **route(compat, dialect, model))
    (call,) = first.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("weather", {"city": "weather in Oslo"})
    messages += [first.choices[0].message.model_dump(),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = litellm.completion(messages=messages, tools=[WEATHER], max_tokens=64, **route(compat, dialect, model))
    assert second.choices[0].message.content.strip() == sim_text(8).strip()


@pytest.mark.parametrize(("dialect", "model"), CASES)
def test_structured_output_json_schema(request: pytest.FixtureRequest, compat: Compat, dialect: str,
                                       model: str) -> None:
    request.applymarker(pytest.mark.compat(f"LiteLLM SDK ({dialect}/)", "structured (JSON schema)"))
    reply = litellm.completion(
        messages=[{"role": "user", "content": "Oslo, Norway"}], max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}},
        **route(compat, dialect, model))
    city = json.loads(reply.choices[0].message.content)
    assert set(city) == {"name", "country"} and city["name"] == city["country"]


def test_embeddings(request: pytest.FixtureRequest, compat: Compat) -> None:
    request.applymarker(pytest.mark.compat("LiteLLM SDK (openai/)", "embeddings"))
    out = litellm.embedding(input=["one", "two"], **{k: v for k, v in route(compat, "openai", "m-oai").items()
                                                      if k != "num_retries"})
    vectors = [d["embedding"] for d in out.data]
    assert len(vectors) == 2 and len(vectors[0]) > 0 and vectors[0] != vectors[1]
