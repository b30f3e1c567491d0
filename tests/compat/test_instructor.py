"""instructor on the OpenAI SDK: its TOOLS, JSON_SCHEMA and JSON modes, and streaming partials.

instructor caps ``jiter`` below what the locked openai 3.x needs, so it runs
in its own locked environment (the ``compat-legacy`` extra, openai 2.x):
``make test-compat-legacy``. In the main environment these tests skip.
"""

from __future__ import annotations

from typing import Any

import pytest

instructor = pytest.importorskip("instructor", reason="instructor runs in `make test-compat-legacy`")
openai = pytest.importorskip("openai")

from instructor.exceptions import InstructorRetryException  # noqa: E402
from pydantic import BaseModel  # noqa: E402

# the models of the compat gateway (conftest.py): an OpenAI-dialect one and an Anthropic one
MODELS = ("m-oai", "m-claude")
CLIENT_KEY = "sk-compat"
Compat = Any  # conftest.Compat (conftest is not importable under --import-mode=importlib)
USER = [{"role": "user", "content": "Oslo, Norway"}]


class City(BaseModel):
    name: str
    country: str


def client(compat: Compat, mode: Any) -> Any:
    raw = openai.OpenAI(base_url=compat.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    return instructor.from_openai(raw, mode=mode)


@pytest.mark.parametrize("model", MODELS)
def test_tools_mode(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("instructor (OpenAI SDK)", "structured (tool)"))
    city = client(compat, instructor.Mode.TOOLS).chat.completions.create(
        model=model, messages=USER, response_model=City, max_retries=0)
    assert city.model_dump() == {"name": "Oslo, Norway", "country": "Oslo, Norway"}


@pytest.mark.parametrize("model", MODELS)
def test_json_schema_mode(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("instructor (OpenAI SDK)", "structured (JSON schema)"))
    city = client(compat, instructor.Mode.JSON_SCHEMA).chat.completions.create(
        model=model, messages=USER, response_model=City, max_retries=0)
    assert isinstance(city, City) and city.name == city.country


def test_json_mode_on_an_openai_model(compat: Compat) -> None:
    """``Mode.JSON`` is ``json_object`` plus the schema in the prompt; the simulator answers ``{"reply": …}``,
    which instructor then rejects: the wire works, the fake model does not read prompts."""
    with pytest.raises(InstructorRetryException):
        client(compat, instructor.Mode.JSON).chat.completions.create(
            model="m-oai", messages=USER, response_model=City, max_retries=0)
    assert compat.bodies("m-oai")[-1]["response_format"] == {"type": "json_object"}


def test_json_mode_on_an_anthropic_model_is_refused_naming_the_field(compat: Compat) -> None:
    with pytest.raises(InstructorRetryException) as raised:  # instructor wraps the BadRequestError
        client(compat, instructor.Mode.JSON).chat.completions.create(
            model="m-claude", messages=USER, response_model=City, max_retries=0)
    assert "'param': 'response_format.type'" in str(raised.value)
    assert compat.bodies("m-claude") == []


@pytest.mark.parametrize("model", MODELS)
def test_streamed_partials(request: pytest.FixtureRequest, compat: Compat, model: str) -> None:
    request.applymarker(pytest.mark.compat("instructor (OpenAI SDK)", "stream"))
    partials = list(client(compat, instructor.Mode.TOOLS).chat.completions.create_partial(
        model=model, messages=USER, response_model=City, max_retries=0))
    assert partials and partials[-1].name == "Oslo, Norway" and partials[-1].country == "Oslo, Norway"
