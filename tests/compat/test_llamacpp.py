"""One path through a real engine: LangChain against labgate in front of llama.cpp (tests/upstreams).

The engine is the tiny generated GGUF of the integration tests, so its text
is noise: these tests check the wire (shape, usage, streaming, translation),
not what it says.
"""

from __future__ import annotations

import anthropic
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

pytestmark = pytest.mark.integration
MODEL = "local-chat"


class City(BaseModel):
    name: str


def chat_openai(url: str) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=url + "/v1", api_key="unused",  # type: ignore[arg-type]
                      max_retries=0, timeout=30, max_tokens=8, stream_usage=True)


def test_chat_openai_chat(request: pytest.FixtureRequest, llamacpp_gateway: str) -> None:
    request.applymarker(pytest.mark.compat("LangChain ChatOpenAI → llama.cpp", "chat"))
    reply = chat_openai(llamacpp_gateway).invoke("hello")
    assert isinstance(reply.content, str) and reply.usage_metadata is not None
    assert 0 < reply.usage_metadata["output_tokens"] <= 8


def test_chat_openai_stream(request: pytest.FixtureRequest, llamacpp_gateway: str) -> None:
    request.applymarker(pytest.mark.compat("LangChain ChatOpenAI → llama.cpp", "stream"))
    chunks = list(chat_openai(llamacpp_gateway).stream("hello"))
    assert len(chunks) > 1 and sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) > 0


def test_chat_anthropic_translated_to_llamacpp(request: pytest.FixtureRequest, llamacpp_gateway: str) -> None:
    request.applymarker(pytest.mark.compat("LangChain ChatAnthropic → llama.cpp", "chat"))
    llm = ChatAnthropic(model=MODEL, base_url=llamacpp_gateway, api_key="unused",  # type: ignore[call-arg]
                        max_retries=0, default_request_timeout=30, max_tokens=8)
    reply = llm.invoke("hello")
    # the Messages dialect's id, though llama.cpp wrote chatcmpl-…
    assert reply.response_metadata["id"].startswith("msg_")
    assert reply.usage_metadata is not None and 0 < reply.usage_metadata["output_tokens"] <= 8


def test_structured_output_reaches_llamacpp_as_a_json_schema(request: pytest.FixtureRequest,
                                                             llamacpp_gateway: str) -> None:
    """``output_config.format`` is sent to llama.cpp as ``response_format`` (never dropped).

    llama.cpp builds a grammar from it; on the tiny test model that grammar fails
    to initialise (tests/upstreams/LLAMACPP-QUIRKS.md), so the engine's 400
    reaches the client: the request was not silently answered as plain text.
    """
    request.applymarker(pytest.mark.compat("LangChain ChatAnthropic → llama.cpp", "structured (JSON schema)"))
    llm = ChatAnthropic(model=MODEL, base_url=llamacpp_gateway, api_key="unused",  # type: ignore[call-arg]
                        max_retries=0, default_request_timeout=30, max_tokens=16)
    try:
        city = llm.with_structured_output(City, method="json_schema").invoke("Oslo")
    except anthropic.BadRequestError as error:
        assert "sampler" in str(error.body).lower() or "grammar" in str(error.body).lower()
    else:
        assert isinstance(city, City)
