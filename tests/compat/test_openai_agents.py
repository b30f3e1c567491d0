"""The OpenAI Agents SDK on chat completions: ``Agent`` + ``OpenAIChatCompletionsModel``, run by ``Runner``."""

from __future__ import annotations

from typing import Any

import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI
from openai.types.responses import ResponseTextDeltaEvent
from pydantic import BaseModel

from labgate.testing import sim_text

# the models of the compat gateway (conftest.py): an OpenAI-dialect one and an Anthropic one
MODELS = ("m-oai", "m-claude")
CLIENT_KEY = "sk-compat"
Compat = Any  # conftest.Compat (conftest is not importable under --import-mode=importlib)
set_tracing_disabled(True)  # and OPENAI_AGENTS_DISABLE_TRACING=1 (conftest): no trace export to OpenAI


class City(BaseModel):
    name: str
    country: str


def agent(compat: Compat, model: str, **options: Any) -> Agent[Any]:
    client = AsyncOpenAI(base_url=compat.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    return Agent(name="compat", instructions="Be brief.", model=OpenAIChatCompletionsModel(model, client),
                 model_settings=ModelSettings(max_tokens=64), **options)


@pytest.mark.parametrize("model", MODELS)
def test_chat(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("OpenAI Agents SDK", "chat"))
    result = Runner.run_sync(agent(compat, model), "hello there")
    assert result.final_output.strip() == sim_text(8).strip()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.asyncio
async def test_stream(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("OpenAI Agents SDK", "stream"))
    run = Runner.run_streamed(agent(compat, model), "hello there")
    deltas = [e.data.delta async for e in run.stream_events()
              if e.type == "raw_response_event" and isinstance(e.data, ResponseTextDeltaEvent)]
    assert "".join(deltas).strip() == sim_text(8).strip() and len(deltas) > 1


@pytest.mark.parametrize("model", MODELS)
def test_tools_round_trip(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("OpenAI Agents SDK", "tools"))
    seen: list[str] = []

    @function_tool
    def weather(city: str) -> str:
        """The current weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    result = Runner.run_sync(agent(compat, model, tools=[weather]), "weather in Oslo")
    assert seen == ["weather in Oslo"]
    assert result.final_output.strip() == sim_text(8).strip()


@pytest.mark.parametrize("model", MODELS)
def test_structured_output(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    """``output_type`` is a strict json_schema response format: on m-claude, Anthropic structured output."""
    request.applymarker(pytest.mark.compat("OpenAI Agents SDK", "structured (JSON schema)"))
    result = Runner.run_sync(agent(compat, model, output_type=City), "Oslo, Norway")
    assert isinstance(result.final_output, City) and result.final_output.name == result.final_output.country
