"""pydantic-ai (slim): ``OpenAIChatModel`` (/v1/chat/completions) and ``AnthropicModel`` (/v1/messages)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput, ToolOutput
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.profiles.anthropic import anthropic_model_profile
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

from labgate.testing import sim_text

# the models of the compat gateway (conftest.py): an OpenAI-dialect one and an Anthropic one
MODELS = ("m-oai", "m-claude")
CLIENT_KEY = "sk-compat"
Compat = Any  # conftest.Compat (conftest is not importable under --import-mode=importlib)


class City(BaseModel):
    name: str
    country: str


def openai_model(compat: Compat, model: str) -> Any:
    return OpenAIChatModel(model, provider=OpenAIProvider(base_url=compat.v1, api_key=CLIENT_KEY))


def anthropic_model(compat: Compat, model: str) -> Any:
    # the profile pydantic-ai gives a current Claude (structured outputs): "m-claude" is labgate's name for one
    return AnthropicModel(model, provider=AnthropicProvider(base_url=compat.url, api_key=CLIENT_KEY),
                          profile=anthropic_model_profile("claude-sonnet-4-5"))


CLIENTS = {"OpenAIChatModel": openai_model, "AnthropicModel": anthropic_model}
CASES = [pytest.param(name, model, id=f"{name}-{model}") for name in CLIENTS for model in MODELS]


def agent(name: str, compat: Compat, model: str, **options: Any) -> Agent[Any, Any]:
    return Agent(CLIENTS[name](compat, model), **options)


@pytest.mark.parametrize(("name", "model"), CASES)
def test_chat(request: pytest.FixtureRequest, compat: Compat, name: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"pydantic-ai {name}", "chat"))
    result = agent(name, compat, model).run_sync("hello there")
    assert result.output.strip() == sim_text(8).strip()
    assert result.usage.output_tokens == 8


@pytest.mark.parametrize(("name", "model"), CASES)
@pytest.mark.asyncio
async def test_stream(request: pytest.FixtureRequest, compat: Compat, name: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"pydantic-ai {name}", "stream"))
    async with agent(name, compat, model).run_stream("hello there") as run:
        deltas = [d async for d in run.stream_text(delta=True)]
    assert "".join(deltas).strip() == sim_text(8).strip()
    assert compat.bodies(model)[-1]["stream"] is True


@pytest.mark.parametrize(("name", "model"), CASES)
def test_tools_round_trip(request: pytest.FixtureRequest, compat: Compat, name: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"pydantic-ai {name}", "tools"))
    seen: list[str] = []
    bot = agent(name, compat, model)

    @bot.tool_plain
    def weather(city: str) -> str:
        """The current weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    result = bot.run_sync("weather in Oslo")
    assert seen == ["weather in Oslo"]
    assert result.output.strip() == sim_text(8).strip()


@pytest.mark.parametrize(("name", "model"), CASES)
def test_structured_output_native(request: pytest.FixtureRequest, compat: Compat, name: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"pydantic-ai {name}", "structured (JSON schema)"))
    result = agent(name, compat, model, output_type=NativeOutput(City)).run_sync("Oslo, Norway")
    assert isinstance(result.output, City) and result.output.name == result.output.country


@pytest.mark.parametrize(("name", "model"), CASES)
def test_structured_output_tool(request: pytest.FixtureRequest, compat: Compat, name: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"pydantic-ai {name}", "structured (tool)"))
    result = agent(name, compat, model, output_type=ToolOutput(City)).run_sync("Oslo, Norway")
    assert result.output == City(name="Oslo, Norway", country="Oslo, Norway")
