"""The provider simulator against hostile bodies: a 400 envelope like the real API's, never a crash.

It runs inside ``labgate demo``, so a body sent to the demo's gateway reaches it:
``dimensions: 1000000000`` once made it allocate until the kernel killed the demo,
``input: [null, {}]`` raised inside aiohttp (a 500 with no envelope), and ``n: 2``
silently returned one choice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgate.testing import Simulator
from labgate.testing.openai_checks import MAX_CHOICES, MAX_DIMENSIONS, MAX_EMBEDDING_INPUTS
from labgate.testing.simulator import UNREADABLE

pytestmark = pytest.mark.timeout(60)
USER = [{"role": "user", "content": "find some cats"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator().run_in_thread() as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10) as client:
        yield client


def post(http: httpx2.Client, sim: Simulator, path: str, body: Any) -> tuple[int, Any]:
    response = http.post(sim.url + path, content=orjson.dumps(body),
                         headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
    return response.status_code, orjson.loads(response.content)


def refused(message: str, param: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


INVALID_INPUT = ("'$.input' is invalid. Please check the API reference: "
                 "https://platform.openai.com/docs/api-reference.")


@pytest.mark.parametrize(("body", "expected"), [
    ({"input": "a", "dimensions": 1_000_000_000}, refused(
        f"Invalid 'dimensions': integer above maximum value. Expected a value <= {MAX_DIMENSIONS}, "
        "but got 1000000000 instead.", "dimensions")),
    ({"input": "a", "dimensions": 0}, refused(
        "Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got 0 instead.",
        "dimensions")),
    ({"input": "a", "dimensions": "9"}, refused(
        "Invalid type for 'dimensions': expected an integer, but got a string instead.", "dimensions")),
    ({"input": "a", "dimensions": True}, refused(
        "Invalid type for 'dimensions': expected an integer, but got a boolean instead.", "dimensions")),
    ({"input": [None, {}]}, refused(INVALID_INPUT, "input")),
    ({"input": [[1, "x"]]}, refused(INVALID_INPUT, "input")),
    ({"input": []}, refused(INVALID_INPUT, "input")),
    ({"input": ""}, refused(INVALID_INPUT, "input")),
    ({"input": {"text": "a"}}, refused(INVALID_INPUT, "input")),
    ({"input": ["a"] * (MAX_EMBEDDING_INPUTS + 1)}, refused(
        f"Invalid 'input': array too long. Expected an array with maximum length {MAX_EMBEDDING_INPUTS}, "
        f"but got an array with length {MAX_EMBEDDING_INPUTS + 1} instead.", "input")),
    ({"input": "a", "encoding_format": "int8"}, refused(
        "Invalid value for 'encoding_format': expected one of 'float', 'base64'.", "encoding_format")),
])
def test_embeddings_bodies_the_real_api_refuses(sim: Simulator, http: httpx2.Client, body: dict,
                                                 expected: dict) -> None:
    assert post(http, sim, "/v1/embeddings", {"model": "e", **body}) == (400, expected)


def test_the_largest_allowed_embedding_is_served(sim: Simulator, http: httpx2.Client) -> None:
    status, answer = post(http, sim, "/v1/embeddings", {"model": "e", "input": ["a", "b"],
                                                         "dimensions": MAX_DIMENSIONS})
    assert (status, [len(d["embedding"]) for d in answer["data"]]) == (200, [MAX_DIMENSIONS, MAX_DIMENSIONS])


@pytest.mark.parametrize(("path", "body", "expected"), [
    ("/v1/chat/completions", {"messages": USER, "n": MAX_CHOICES + 1}, refused(
        f"Invalid 'n': integer above maximum value. Expected a value <= {MAX_CHOICES}, "
        f"but got {MAX_CHOICES + 1} instead.", "n")),
    ("/v1/completions", {"prompt": "hi", "n": 0}, refused(
        "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.", "n")),
    ("/v1/chat/completions", {"messages": []}, refused(
        "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        "messages")),
    ("/v1/chat/completions", {"messages": [{"role": {"x": 1}, "content": "a"}]}, refused(
        "'$.messages[0].role' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference.", "messages[0].role")),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, refused(
        "Invalid type for 'messages[0].content[0].text': expected a string, but got an integer instead.",
        "messages[0].content[0].text")),
    ("/v1/chat/completions", {"messages": USER, "tools": [{"type": "function", "function": "f"}]}, refused(
        "Missing required parameter: 'tools[0].function.name'.", "tools[0].function.name")),
    ("/v1/chat/completions", {"messages": USER, "tool_choice": {"type": "function"}}, refused(
        "Missing required parameter: 'tool_choice.function.name'.", "tool_choice.function.name")),
    ("/v1/chat/completions", {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, refused(
        "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with "
        "length 5 instead.", "stop")),
    ("/v1/completions", {"prompt": [None]}, refused(
        "'$.prompt' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        "prompt")),
])
def test_generation_bodies_the_real_api_refuses(sim: Simulator, http: httpx2.Client, path: str, body: dict,
                                                 expected: dict) -> None:
    assert post(http, sim, path, {"model": "m", **body}) == (400, expected)


def test_n_choices_are_all_returned(sim: Simulator) -> None:
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    chat = client.chat.completions.create(model="m", messages=USER, n=3, max_tokens=2)  # type: ignore[arg-type]
    streamed: dict[int, str] = {}
    for chunk in client.chat.completions.create(model="m", messages=USER, n=2, max_tokens=2,  # type: ignore[arg-type]
                                                stream=True):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    legacy = client.completions.create(model="m", prompt="hi", n=2, max_tokens=3)
    client.close()
    assert [(c.index, c.message.content, c.finish_reason) for c in chat.choices] == [
        (0, " sim1 sim2", "length"), (1, " sim1 sim2", "length"), (2, " sim1 sim2", "length")]
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens) == (3, 6, 9)
    assert streamed == {0: " sim1 sim2", 1: " sim1 sim2"}
    assert [(c.index, c.text) for c in legacy.choices] == [(0, " sim1 sim2 sim3"), (1, " sim1 sim2 sim3")]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "/v1/chat/completions": ("messages", "n", "max_tokens", "max_completion_tokens", "stop", "tools", "tool_choice",
                             "stream", "stream_options", "response_format", "parallel_tool_calls"),
    "/v1/completions": ("prompt", "n", "max_tokens", "stop", "stream", "stream_options"),
    "/v1/embeddings": ("input", "dimensions", "encoding_format"),
    "/v1/messages": ("messages", "max_tokens", "system", "tools", "tool_choice", "stop_sequences", "stream"),
}


VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": USER},
    "/v1/completions": {"prompt": "hi"},
    "/v1/embeddings": {"input": "a"},
    "/v1/messages": {"messages": USER, "max_tokens": 5},
}


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    path = draw(st.sampled_from(sorted(FIELDS)))
    body: dict[str, Any] = {"model": "m", **VALID[path]}  # well-formed, then up to 3 fields made hostile
    for name in draw(st.lists(st.sampled_from(FIELDS[path]), min_size=1, max_size=3, unique=True)):
        body[name] = draw(JSON)
    return path, body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile())
def test_any_body_gets_an_answer_or_a_400_from_a_check(sim: Simulator, http: httpx2.Client,
                                                       case: tuple[str, dict[str, Any]]) -> None:
    path, body = case
    response = http.post(sim.url + path, content=orjson.dumps(body),
                         headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
    assert response.status_code in (200, 400), response.content[:300]
    if response.status_code == 400:
        envelope = orjson.loads(response.content)
        message = envelope["error"]["message"]
        assert UNREADABLE not in message, (body, message)  # a check, not the safety net, refused it
    assert len(response.content) < 1_000_000
