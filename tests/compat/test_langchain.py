"""LangChain: ``ChatOpenAI`` (/v1/chat/completions), ``ChatAnthropic`` (/v1/messages), ``OpenAIEmbeddings``."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, Field

from labgate.testing import sim_text

# the models of the compat gateway (conftest.py): an OpenAI-dialect one and an Anthropic one
OPENAI_MODEL, ANTHROPIC_MODEL = MODELS = ("m-oai", "m-claude")
CLIENT_KEY = "sk-compat"
Compat = Any  # conftest.Compat (conftest is not importable under --import-mode=importlib)


class City(BaseModel):
    """A city and its country."""

    name: str
    country: str
    population: int = Field(ge=0)


@tool
def weather(city: str) -> str:
    """The current weather in a city."""
    return f"sunny in {city}"


def chat_openai(compat: Compat, model: str) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=compat.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)


def chat_anthropic(compat: Compat, model: str) -> ChatAnthropic:
    return ChatAnthropic(model=model, base_url=compat.url, api_key=CLIENT_KEY, max_retries=0,  # type: ignore[call-arg]
                         default_request_timeout=10, max_tokens=256)


CLIENTS = {"ChatOpenAI": chat_openai, "ChatAnthropic": chat_anthropic}
CASES = [pytest.param(name, model, id=f"{name}-{model}") for name in CLIENTS for model in MODELS]


def client(name: str, compat: Compat, model: str) -> Any:
    return CLIENTS[name](compat, model)


@pytest.mark.parametrize(("name", "model"), CASES)
def test_chat(request: pytest.FixtureRequest, compat: Compat, name: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"LangChain {name}", "chat"))
    reply = client(name, compat, model).invoke("hello there")
    assert reply.content == sim_text(8).strip() or reply.content == sim_text(8)
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 8


@pytest.mark.parametrize(("name", "model"), CASES)
def test_stream(request: pytest.FixtureRequest, compat: Compat, name: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"LangChain {name}", "stream"))
    chunks = list(client(name, compat, model).stream("hello there"))
    text = "".join(c.content if isinstance(c.content, str) else
                   "".join(p.get("text", "") for p in c.content if isinstance(p, dict)) for c in chunks)
    assert text.strip() == sim_text(8).strip()
    assert len(chunks) > 3


@pytest.mark.parametrize(("name", "model"), CASES)
def test_tools_round_trip(request: pytest.FixtureRequest, compat: Compat, name: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"LangChain {name}", "tools"))
    llm = client(name, compat, model).bind_tools([weather])
    question = HumanMessage("weather in Oslo")
    first = llm.invoke([question])
    (call,) = first.tool_calls
    assert call["name"] == "weather" and call["args"] == {"city": "weather in Oslo"}
    result = ToolMessage(weather.invoke(call["args"]), tool_call_id=call["id"])
    second = llm.invoke([question, first, result])
    assert not second.tool_calls and second.text.strip() == sim_text(8).strip()


@pytest.mark.parametrize(("name", "model"), CASES)
def test_structured_output_json_schema(request: pytest.FixtureRequest, compat: Compat, name: str,
                                       model: str) -> None:
    request.applymarker(pytest.mark.compat(f"LangChain {name}", "structured (JSON schema)"))
    llm = client(name, compat, model).with_structured_output(City, method="json_schema")
    city = llm.invoke("Oslo, Norway")
    assert isinstance(city, City) and city.population == 0 and city.name == city.country
    sent = compat.bodies(model)[-1]
    if model == ANTHROPIC_MODEL and name == "ChatAnthropic":  # untranslated: Anthropic's own field
        assert sent.get("output_config", {}).get("format", {}).get("type") == "json_schema" or "output_format" in sent
    elif model == ANTHROPIC_MODEL:  # translated to Anthropic structured output
        assert sent["output_config"]["format"]["schema"]["required"] == ["name", "country", "population"]
    else:
        assert sent["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize(("name", "model"), CASES)
def test_structured_output_tool(request: pytest.FixtureRequest, compat: Compat, name: str, model: str) -> None:
    request.applymarker(pytest.mark.compat(f"LangChain {name}", "structured (tool)"))
    llm = client(name, compat, model).with_structured_output(City, method="function_calling")
    city = llm.invoke("Oslo, Norway")
    assert isinstance(city, City) and city.name == "Oslo, Norway"


def test_json_mode_on_an_anthropic_model_is_refused_naming_the_field(
        request: pytest.FixtureRequest, compat: Compat) -> None:
    """``json_object`` has no Anthropic form: a 400 naming ``response_format.type``, never plain text."""
    import openai

    request.applymarker(pytest.mark.compat("LangChain ChatOpenAI", "structured (JSON schema)"))
    llm = chat_openai(compat, ANTHROPIC_MODEL).with_structured_output(City, method="json_mode")
    with pytest.raises(openai.BadRequestError) as raised:
        llm.invoke("Oslo, Norway")
    assert raised.value.body["param"] == "response_format.type"  # type: ignore[index]
    assert compat.bodies(ANTHROPIC_MODEL) == []


def test_embeddings(request: pytest.FixtureRequest, compat: Compat) -> None:
    request.applymarker(pytest.mark.compat("LangChain OpenAIEmbeddings", "embeddings"))
    # check_embedding_ctx_length=False: else tiktoken downloads its encodings (network)
    embeddings = OpenAIEmbeddings(model=OPENAI_MODEL, base_url=compat.v1, api_key=CLIENT_KEY,  # type: ignore[arg-type]
                                  check_embedding_ctx_length=False, max_retries=0)
    vectors = embeddings.embed_documents(["one", "two"])
    query = embeddings.embed_query("one")
    assert len(vectors) == 2 and len(vectors[0]) > 0 and vectors[0] == pytest.approx(query)
    assert vectors[0] != vectors[1]
