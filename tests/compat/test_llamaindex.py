"""LlamaIndex ``OpenAILike``: chat, stream, tool calls and structured prediction through labgate.

Current LlamaIndex needs openai 2.x, so it runs in the ``compat-legacy``
environment: ``make test-compat-legacy``. In the main environment these tests skip.
"""

from __future__ import annotations

from typing import Any

import pytest

openai_like = pytest.importorskip("llama_index.llms.openai_like",
                                  reason="LlamaIndex runs in `make test-compat-legacy`")

from llama_index.core.llms import ChatMessage  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from labgate.testing import sim_text  # noqa: E402

# the models of the compat gateway (conftest.py): an OpenAI-dialect one and an Anthropic one
MODELS = ("m-oai", "m-claude")
CLIENT_KEY = "sk-compat"
Compat = Any  # conftest.Compat (conftest is not importable under --import-mode=importlib)


class City(BaseModel):
    name: str
    country: str


def llm(compat: Compat, model: str) -> Any:
    return openai_like.OpenAILike(model=model, api_base=compat.v1, api_key=CLIENT_KEY, is_chat_model=True,
                                  is_function_calling_model=True, max_retries=0, timeout=10,
                                  context_window=8192)


@pytest.mark.parametrize("model", MODELS)
def test_chat(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("LlamaIndex OpenAILike", "chat"))
    reply = llm(compat, model).chat([ChatMessage(role="user", content="hello there")])
    assert reply.message.content.strip() == sim_text(8).strip()


@pytest.mark.parametrize("model", MODELS)
def test_stream(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("LlamaIndex OpenAILike", "stream"))
    chunks = list(llm(compat, model).stream_chat([ChatMessage(role="user", content="hello there")]))
    assert "".join(c.delta or "" for c in chunks).strip() == sim_text(8).strip() and len(chunks) > 3


@pytest.mark.parametrize("model", MODELS)
def test_tools(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("LlamaIndex OpenAILike", "tools"))

    def weather(city: str) -> str:
        """The current weather in a city."""
        return f"sunny in {city}"

    model_ = llm(compat, model)
    response = model_.chat_with_tools([FunctionTool.from_defaults(fn=weather)], user_msg="weather in Oslo")
    (call,) = model_.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert (call.tool_name, call.tool_kwargs) == ("weather", {"city": "weather in Oslo"})


@pytest.mark.parametrize("model", MODELS)
def test_structured_predict(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("LlamaIndex OpenAILike", "structured (tool)"))
    from llama_index.core.prompts import PromptTemplate

    city = llm(compat, model).structured_predict(City, PromptTemplate("Extract: {text}"), text="Oslo, Norway")
    assert city == City(name="Extract: Oslo, Norway", country="Extract: Oslo, Norway")
