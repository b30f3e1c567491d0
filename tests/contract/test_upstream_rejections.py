"""Upstream 4xx through the shared gateway: what falls back, and what a client is told not to retry.

401/403/404 refuse one *deployment* (its key, its model): the chain falls back, and
when every deployment refused, the client gets 502 ``all_deployments_rejected`` with
``x-should-retry: false``, so the official SDKs do not send the same request again.
Any other 4xx refuses the *request*: no fallback, the upstream's status at once.
"""

from __future__ import annotations

import functools
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from labgate.testing import Behaviour, Status

pytestmark = pytest.mark.timeout(20)

TYPES = ("openai_compatible", "ollama", "anthropic")
CHAT = {"messages": [{"role": "user", "content": "find some cats"}]}


@functools.cache
def http() -> httpx2.Client:
    return httpx2.Client(timeout=10)


def post(gateway: Any, model: str, path: str = "/v1/chat/completions", **extra: Any) -> httpx2.Response:
    body = {"model": model, **CHAT, **extra}
    return http().post(gateway.url + path, json=body, headers={"authorization": f"Bearer {gateway.key}"})


def seen(response: httpx2.Response) -> dict[str, str]:
    names = ("x-should-retry", "retry-after", "x-labgate-attempts", "x-labgate-deployment")
    return {n: response.headers[n] for n in names if n in response.headers}


@pytest.mark.parametrize("adapter_type", TYPES)
@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_deployment_with_nothing_left_is_a_final_502(gateway: Any, sims: Any, faults: Any,
                                                              adapter_type: str, status: int) -> None:
    faults.fault(adapter_type, Status(status, "no such key"))
    answer = post(gateway, f"m-{adapter_type}")
    rid = answer.headers["x-request-id"]
    assert (answer.status_code, orjson.loads(answer.content), seen(answer)) == (
        502,
        {"error": {"message": f"All 1 attempt(s) failed: {adapter_type}/m-{adapter_type}: provider "
                              f"'{adapter_type}' answered {status}: no such key",
                   "type": "api_error", "param": None, "code": "all_deployments_rejected"},
         "request_id": rid},
        {"x-should-retry": "false", "x-labgate-attempts": "1",
         "x-labgate-deployment": f"{adapter_type}/m-{adapter_type}"})
    assert gateway.record(rid)["failed_attempts"] == [
        {"deployment": f"{adapter_type}/m-{adapter_type}", "error": "upstream_deployment_error",
         "message": f"provider '{adapter_type}' answered {status}: no such key"}]


@pytest.mark.parametrize("adapter_type", TYPES)
def test_a_refused_deployment_falls_back(gateway: Any, sims: Any, faults: Any, adapter_type: str) -> None:
    faults.fault(adapter_type, Status(401, "bad key"))
    answer = post(gateway, f"fb-{adapter_type}")
    assert (answer.status_code, seen(answer)) == (200, {"x-labgate-attempts": "2",
                                                        "x-labgate-deployment": "backup/m-backup"})
    assert len(sims.bodies("m-backup")) == 1


def test_refused_then_a_transient_failure_may_be_retried(gateway: Any, sims: Any, faults: Any) -> None:
    faults.fault("openai", Status(403, "forbidden"))
    faults.set(sims.backup, Behaviour(fault=Status(503)))
    answer = post(gateway, "fb-openai")
    assert (answer.status_code, orjson.loads(answer.content)["error"]["code"], seen(answer)) == (
        502, "all_attempts_failed", {"x-labgate-attempts": "2", "x-labgate-deployment": "backup/m-backup"})


def test_every_deployment_refused_in_a_chain(gateway: Any, sims: Any, faults: Any) -> None:
    faults.fault("vllm", Status(404, "model not found"))
    faults.set(sims.backup, Behaviour(fault=Status(401, "bad key")))
    answer = post(gateway, "fb-vllm")
    assert (answer.status_code, orjson.loads(answer.content)["error"]["code"], seen(answer)) == (
        502, "all_deployments_rejected",
        {"x-should-retry": "false", "x-labgate-attempts": "2", "x-labgate-deployment": "backup/m-backup"})


@pytest.mark.parametrize("adapter_type", TYPES)
def test_a_rejected_request_does_not_fall_back(gateway: Any, sims: Any, faults: Any, adapter_type: str) -> None:
    faults.fault(adapter_type, Status(422, "messages: too long"))
    answer = post(gateway, f"fb-{adapter_type}")
    assert (answer.status_code, orjson.loads(answer.content)["error"]["code"], seen(answer)) == (
        422, "upstream_rejected", {"x-should-retry": "false", "x-labgate-attempts": "1",
                                   "x-labgate-deployment": f"{adapter_type}/m-{adapter_type}"})
    assert sims.bodies("m-backup") == []


def test_the_openai_sdk_does_not_retry_a_refused_deployment(gateway: Any, sims: Any, faults: Any) -> None:
    faults.fault("openai", Status(401, "bad key"))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=3)
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="m-openai", **CHAT)  # type: ignore[call-overload]
    client.close()
    assert (raised.value.status_code, raised.value.code) == (502, "all_deployments_rejected")
    assert len(sims.bodies("m-openai")) == 1  # one try: the SDK honoured x-should-retry: false


def test_the_anthropic_sdk_does_not_retry_a_refused_deployment(gateway: Any, sims: Any, faults: Any) -> None:
    faults.fault("anthropic", Status(403, "no access"))
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=3)
    with pytest.raises(anthropic.InternalServerError) as raised:
        client.messages.create(model="m-anthropic", max_tokens=5, **CHAT)  # type: ignore[arg-type]
    client.close()
    assert (raised.value.status_code, raised.value.body) == (502, {
        "type": "error", "error": {"type": "api_error", "message": "All 1 attempt(s) failed: anthropic/m-anthropic: "
                                   "provider 'anthropic' answered 403: no access"},
        "request_id": raised.value.response.headers["x-request-id"]})
    assert len(sims.bodies("m-anthropic")) == 1


@pytest.mark.parametrize(("extra", "param"), [({"dimensions": 1_000_000_000}, "dimensions"),
                                              ({"input": [None, {}]}, "input")])
def test_an_embedding_the_simulator_refuses_is_the_clients_400(gateway: Any, sims: Any, extra: dict,
                                                               param: str) -> None:
    """What once killed `labgate demo` (its simulator allocated without bound) is now a 400 from upstream."""
    body = {"model": "m-openai", "input": "a", **extra}
    answer = http().post(gateway.url + "/v1/embeddings", json=body,
                         headers={"authorization": f"Bearer {gateway.key}"})
    error = orjson.loads(answer.content)["error"]
    assert (answer.status_code, error["type"], error["code"], error["param"], seen(answer)["x-should-retry"]) == (
        400, "invalid_request_error", "upstream_rejected", param, "false")
