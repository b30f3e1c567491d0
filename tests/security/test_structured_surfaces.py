"""Structured-output fields with hostile values, on both surfaces and to both dialects' models.

``output_config`` / ``output_format`` on ``/v1/messages`` and ``response_format`` on
``/v1/chat/completions`` change what the answer means: a value labgate cannot
translate is a 400 in the surface's own envelope, with a request id, naming the
field: never a 5xx, a traceback, or a plain-text answer that ignores it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgate.testing import Simulator
from labgate.testing.gateway import config_from, gateway_in_thread

pytestmark = pytest.mark.timeout(120)
USER = [{"role": "user", "content": "hi"}]
KEYS = {"LABGATE_SEC_STRUCTURED_OPENAI": "sk-sim-o", "LABGATE_SEC_STRUCTURED_ANTHROPIC": "sk-ant-s"}


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    os.environ.update(KEYS)
    with Simulator(api_key=KEYS["LABGATE_SEC_STRUCTURED_OPENAI"]).run_in_thread() as oai, \
            Simulator(api_key=KEYS["LABGATE_SEC_STRUCTURED_ANTHROPIC"]).run_in_thread() as claude:
        config = config_from({
            "oai": {"type": "openai_compatible", "base_url": oai.url + "/v1",
                    "api_key_env": "LABGATE_SEC_STRUCTURED_OPENAI", "models": ["m-oai"]},
            "claude": {"type": "anthropic", "base_url": claude.url,
                       "api_key_env": "LABGATE_SEC_STRUCTURED_ANTHROPIC", "models": ["m-claude"]},
        })
        with gateway_in_thread(config) as running:
            yield running.url


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=20) as client:
        yield client


def post(http: httpx2.Client, url: str, path: str, body: Any) -> tuple[int, Any]:
    response = http.post(url + path, content=orjson.dumps(body),
                         headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
    return response.status_code, orjson.loads(response.content)


@pytest.mark.parametrize("model", ["m-oai", "m-claude"])
@pytest.mark.parametrize(("fields", "param"), [
    ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format.type"),
    ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
    ({"output_config": {"format": []}}, "output_config.format"),
    ({"output_config": 3}, "output_config"),
    ({"output_format": {"type": "json_schema", "schema": "x"}}, "output_format.schema"),
])
def test_messages_refuses_what_it_cannot_translate(http: httpx2.Client, gateway: str, model: str,
                                                   fields: dict[str, Any], param: str) -> None:
    status, body = post(http, gateway, "/v1/messages", {"model": model, "max_tokens": 8, "messages": USER, **fields})
    assert status == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert param in body["error"]["message"] and body["request_id"].startswith("req_")


@pytest.mark.parametrize(("response_format", "param"), [
    ({"type": "json_object"}, "response_format.type"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"type": "regex", "regex": "a+"}, "response_format.type"),
])
def test_chat_refuses_what_anthropic_cannot_honour(http: httpx2.Client, gateway: str, response_format: Any,
                                                   param: str) -> None:
    status, body = post(http, gateway, "/v1/chat/completions",
                        {"model": "m-claude", "messages": USER, "response_format": response_format})
    assert status == 400 and body["error"]["param"] == param and body["request_id"].startswith("req_")


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=10)
FORMATS = st.fixed_dictionaries({}, optional={"type": st.sampled_from(["json_schema", "json_object", "text"]) | JSON,
                                              "schema": JSON, "json_schema": JSON})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.sampled_from(["m-oai", "m-claude"]), st.sampled_from(["output_config", "output_format", "response_format"]),
       FORMATS | JSON, st.booleans())
def test_random_structured_fields_get_an_answer_or_a_400(http: httpx2.Client, gateway: str, model: str,
                                                         field: str, value: Any, stream: bool) -> None:
    if field == "response_format":
        path, body = "/v1/chat/completions", {"model": model, "messages": USER, field: value}
    else:
        wrapped = {"format": value} if field == "output_config" else value
        path, body = "/v1/messages", {"model": model, "max_tokens": 8, "messages": USER, field: wrapped}
    body["stream"] = stream
    response = http.post(gateway + path, content=orjson.dumps(body),
                         headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
    assert response.status_code in (200, 400), response.text[:300]
    if response.status_code == 400:
        envelope = orjson.loads(response.content)
        assert envelope["request_id"].startswith("req_")
