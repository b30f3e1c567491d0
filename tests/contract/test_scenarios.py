"""One scenario suite, run against every adapter type through the provider simulator.

Each adapter type declares below what it serves (:data:`KINDS`), so a case it
does not support is asserted as the explicit error a client gets — never
skipped. Every answer is checked whole: status, the error envelope
``{"error": {message, type, param, code}, "request_id"}`` and the headers a
client acts on (``x-request-id``, ``x-should-retry``, ``retry-after``,
``x-labgate-*``).

Routes of the shared gateway (see ``conftest.py``): ``m-<type>`` is one
deployment with no fallback; ``fb-<type>`` is the same deployment followed by
``backup/m-backup``, which answers ``"from the backup"``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest.mock import ANY

import aiohttp
import httpx2
import openai
import orjson
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from labgate.providers.registry import TYPES
from labgate.testing import (
    Behaviour,
    CutStream,
    Disconnect,
    Fault,
    Hang,
    NotJSON,
    RateLimit,
    Simulator,
    Status,
    embedding,
    sim_text,
)

pytestmark = pytest.mark.timeout(20)

ALL = frozenset({"chat", "completions", "embeddings"})


@dataclass(frozen=True, slots=True)
class Kind:
    """An adapter type and what it declares it supports."""

    type: str
    serves: frozenset[str]
    # simulator stream events up to and including the first token: a cut there means the
    # client already holds the role chunk and " sim1" when the upstream goes away
    first_token_events: int
    # the upstream's stream opens with an event that carries no token (Anthropic's message_start,
    # sent at once): the client gets its role chunk then, so the stream has started before the
    # first token and a stall there can no longer fall back
    opens_before_first_token: bool = False

    @property
    def model(self) -> str:
        return f"m-{self.type}"

    @property
    def fallback_route(self) -> str:
        return f"fb-{self.type}"

    @property
    def deployment(self) -> str:
        return f"{self.type}/{self.model}"


KINDS = (
    Kind("openai_compatible", ALL, first_token_events=2),
    Kind("openai", ALL, first_token_events=2),
    Kind("vllm", ALL, first_token_events=2),
    Kind("llama_cpp", ALL, first_token_events=2),
    Kind("ollama", ALL, first_token_events=2),
    Kind("lmstudio", ALL, first_token_events=2),
    # message_start, ping, content_block_start, the first text_delta
    Kind("anthropic", frozenset({"chat"}), first_token_events=4, opens_before_first_token=True),
)
by_kind = pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.type)
streamed = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])

PROMPT = "find some cats"  # 3 prompt tokens
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}]}),
    "completions": ("/v1/completions", {"prompt": PROMPT}),
    "embeddings": ("/v1/embeddings", {"input": PROMPT}),
}
ENDPOINT_CASES = [("chat", False), ("chat", True), ("completions", False), ("completions", True),
                  ("embeddings", False)]
by_endpoint = pytest.mark.parametrize(("endpoint", "stream"), ENDPOINT_CASES,
                                      ids=[f"{e}-{'stream' if s else 'whole'}" for e, s in ENDPOINT_CASES])
# the headers a client acts on; any of them present but not expected fails a comparison
SEEN_HEADERS = ("content-type", "x-request-id", "x-should-retry", "retry-after", "allow", "connection",
                "x-labgate-provider", "x-labgate-deployment", "x-labgate-attempts")
JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"


class Matches:
    """Equal to any string the regex fully matches (for messages that quote a library's words)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = re.compile(pattern, re.DOTALL)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and self.pattern.fullmatch(other) is not None

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Matches({self.pattern.pattern!r})"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def request_id(self) -> str:
        return self.headers["x-request-id"]

    def json(self) -> Any:
        return orjson.loads(self.body)

    def seen_headers(self) -> dict[str, str]:
        return {name: self.headers[name] for name in SEEN_HEADERS if name in self.headers}

    def events(self) -> list[Any]:
        """The data of each SSE event, parsed; ``[DONE]`` stays a string."""
        assert self.body.endswith(b"\n\n"), self.body[-200:]
        out = []
        for block in self.body.decode().split("\n\n")[:-1]:
            assert block.startswith("data: ") and "\n" not in block, block
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else orjson.loads(data))
        return out


@functools.cache
def http() -> httpx2.Client:
    """One keep-alive client for the module: building one costs ~60 ms of TLS setup (unused on plain HTTP)."""
    return httpx2.Client(timeout=10, verify=False)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    if http.cache_info().currsize:
        http().close()
        http.cache_clear()


def call(gateway: Any, path: str, body: Any = None, *, method: str = "POST", auth: bool = True,
         headers: dict[str, str] | None = None, content: bytes | Iterable[bytes] | None = None) -> Answer:
    """One raw HTTP request (with the gateway's key unless ``auth=False``); no body may hold a traceback."""
    sent = dict(headers or {})
    if auth:
        sent["authorization"] = f"Bearer {gateway.key}"
    response = http().request(method, gateway.url + path, json=body if content is None else None,
                              content=content, headers=sent)
    assert b"Traceback" not in response.content
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


def envelope(message: Any, kind: str, code: str | None, *, request_id: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}, "request_id": request_id}


def error_headers(answer: Answer, *, retry: bool = True, retry_after: str | None = None,
                  **labgate: str) -> dict[str, str]:
    """The headers an error answer must carry (``labgate``: attempts/provider/deployment)."""
    expected = {"content-type": JSON, "x-request-id": answer.request_id}
    if not retry:
        expected["x-should-retry"] = "false"
    if retry_after is not None:
        expected["retry-after"] = retry_after
    expected.update({f"x-labgate-{name}": value for name, value in labgate.items()})
    return expected


def request(model: str, endpoint: str = "chat", *, stream: bool = False, **extra: Any) -> tuple[str, dict]:
    path, body = REQUESTS[endpoint]
    body = {"model": model, **body, **extra}
    if stream:
        body["stream"] = True
    return path, body


def text_of(answer: Answer, *, stream: bool) -> str:
    """The chat answer's text, reassembled from the deltas of a stream."""
    if not stream:
        return answer.json()["choices"][0]["message"]["content"]
    events = answer.events()
    assert events[-1] == "[DONE]"
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])


def expected_success(endpoint: str, stream: bool, upstream: str) -> Any:
    usage = {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
    pieces = [f" sim{i}" for i in range(1, 9)]
    if endpoint == "embeddings":
        return {"object": "list", "model": upstream, "usage": {"prompt_tokens": 3, "total_tokens": 3},
                "data": [{"object": "embedding", "index": 0, "embedding": embedding(PROMPT, 16)}]}
    if endpoint == "completions" and not stream:
        return {"id": ANY, "object": "text_completion", "created": ANY, "model": upstream, "usage": usage,
                "choices": [{"text": sim_text(8), "index": 0, "logprobs": None, "finish_reason": "stop"}]}
    if endpoint == "completions":
        return [(p, None) for p in pieces] + [("", "stop")]
    if not stream:
        message = {"role": "assistant", "content": sim_text(8)}
        return {"id": ANY, "object": "chat.completion", "created": ANY, "model": upstream, "usage": usage,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}]}
    deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces] + [{}]
    return [(d, "stop" if not d else None) for d in deltas]


def stream_shape(answer: Answer, endpoint: str) -> list[Any]:
    """(delta or text, finish_reason) per chunk; checks [DONE] ends it and no usage chunk came."""
    events = answer.events()
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c.get("usage") for c in chunks] == [None] * len(chunks), "usage the client did not ask for"
    key = "delta" if endpoint == "chat" else "text"
    return [(c["choices"][0][key], c["choices"][0]["finish_reason"]) for c in chunks]


# --- the declarations themselves ---------------------------------------------------------------


# adapter types with no upstream to simulate, and the suite that covers them instead
IN_PROCESS = {"local_embeddings": "tests/contract/test_embeddings_sdk.py"}


def test_every_adapter_type_is_in_the_suite() -> None:
    assert sorted(k.type for k in KINDS) == sorted(set(TYPES) - set(IN_PROCESS))


@by_kind
def test_declared_endpoints_are_what_the_adapter_serves(gateway: Any, kind: Kind) -> None:
    # only the OpenAI surface's endpoints: an adapter may serve others (Anthropic's "messages")
    assert gateway.running.gateway.runtime.adapters[kind.type].endpoints & ALL == kind.serves


# --- success, and unsupported endpoints --------------------------------------------------------


@by_kind
@by_endpoint
def test_endpoint(gateway: Any, sims: Any, kind: Kind, endpoint: str, stream: bool) -> None:
    answer = call(gateway, *request(kind.model, endpoint, stream=stream))
    if endpoint not in kind.serves:
        assert answer.status == 400
        assert answer.json() == envelope(f"provider '{kind.type}' does not serve {endpoint}", "invalid_request_error",
                                         "unsupported_endpoint", request_id=answer.request_id)
        assert answer.seen_headers() == error_headers(answer, retry=False, attempts="0")
        assert sims.of(kind.type).requests == []
        return
    assert answer.status == 200
    assert answer.seen_headers() == {"content-type": SSE if stream else JSON, "x-request-id": answer.request_id,
                                     "x-labgate-attempts": "1", "x-labgate-provider": kind.type,
                                     "x-labgate-deployment": kind.deployment}
    got = stream_shape(answer, endpoint) if stream else answer.json()
    assert got == expected_success(endpoint, stream, kind.model)


@by_kind
@by_endpoint
def test_endpoint_on_a_route_with_a_fallback(gateway: Any, sims: Any, kind: Kind, endpoint: str,
                                             stream: bool) -> None:
    """A deployment that cannot serve the endpoint is passed over (not counted as an attempt)."""
    answer = call(gateway, *request(kind.fallback_route, endpoint, stream=stream))
    assert answer.status == 200
    served_by = kind.type if endpoint in kind.serves else "backup"
    assert (answer.headers["x-labgate-provider"], answer.headers["x-labgate-attempts"]) == (served_by, "1")
    if endpoint in kind.serves:
        got = stream_shape(answer, endpoint) if stream else answer.json()
        assert got == expected_success(endpoint, stream, kind.model)
    else:
        assert sims.bodies("m-backup") != []
        assert sims.of(kind.type).requests == []


# --- upstream faults before the first byte ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """An upstream fault: what a client gets when no fallback is left, and the cause it names."""

    name: str
    fault: Fault
    status: int
    type: str
    code: str  # the failed attempt's error code in the access log
    cause: str  # {p} is the provider's name
    stream_cause: str | None = None  # when a stream names it differently
    # transport failures: the provider and what went wrong are named exactly; what follows
    # (timings, the socket error) is the HTTP client's own wording
    detail: bool = False
    retry_after: str | None = None

    def why(self, provider: str, *, stream: bool) -> str:
        """A regex of the cause as labgate words it."""
        cause = self.stream_cause if stream and self.stream_cause is not None else self.cause
        return re.escape(cause.format(p=provider)) + (".*" if self.detail else "")


NOT_JSON = "provider '{p}' sent a body that is not JSON: '<html><body>simulated proxy page</body></html>'"
NOT_JSON_EVENT = "provider '{p}' sent a stream event that is not JSON: b'<html>simulated proxy page</html>'"
FAULTS = (
    Case("500", Status(500), 502, "api_error", "upstream_server_error",
         "provider '{p}' answered 500: simulated upstream error"),
    Case("502", Status(502), 502, "api_error", "upstream_server_error",
         "provider '{p}' answered 502: simulated upstream error"),
    Case("503", Status(503), 502, "api_error", "upstream_server_error",
         "provider '{p}' answered 503: simulated upstream error"),
    Case("429", RateLimit(2), 429, "rate_limit_error", "rate_limit_exceeded",
         "provider '{p}' answered 429: Rate limit reached (simulated).", retry_after="2"),
    Case("timeout", Hang(), 504, "timeout_error", "upstream_timeout", "provider '{p}' timed out", detail=True),
    Case("not-json", NotJSON(), 502, "api_error", "upstream_bad_response", NOT_JSON, NOT_JSON_EVENT),
    Case("disconnect", Disconnect(), 502, "api_error", "upstream_connection_error",
         "provider '{p}' closed the connection", detail=True),
    # non-stream: half a body; stream: the head, then the connection closes before any event
    Case("cut-before-first-event", CutStream(0), 502, "api_error", "upstream_connection_error",
         "provider '{p}' cut the response short", detail=True),
)
by_fault = pytest.mark.parametrize("case", FAULTS, ids=lambda c: c.name)


def attempt_log(gateway: Any, request_id: str) -> dict[str, Any]:
    record = gateway.record(request_id)
    return {key: record[key] for key in ("status", "outcome", "attempts", "deployment", "failed_attempts")}


@by_kind
@by_fault
@streamed
def test_fault_without_a_fallback(gateway: Any, faults: Any, kind: Kind, case: Case, stream: bool) -> None:
    faults.fault(kind.type, case.fault)
    answer = call(gateway, *request(kind.model, stream=stream))
    cause = case.why(kind.type, stream=stream)
    assert answer.status == case.status
    assert answer.json() == envelope(Matches(rf"All 1 attempt\(s\) failed: {re.escape(kind.deployment)}: {cause}"),
                                     case.type, "all_attempts_failed", request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, retry_after=case.retry_after, attempts="1",
                                                  provider=kind.type, deployment=kind.deployment)
    assert attempt_log(gateway, answer.request_id) == {
        "status": case.status, "outcome": "error", "attempts": 1, "deployment": kind.deployment,
        "failed_attempts": [{"deployment": kind.deployment, "error": case.code, "message": Matches(cause)}]}


@by_kind
@by_fault
@streamed
def test_fault_falls_back(gateway: Any, sims: Any, faults: Any, kind: Kind, case: Case, stream: bool) -> None:
    faults.fault(kind.type, case.fault)
    answer = call(gateway, *request(kind.fallback_route, stream=stream))
    assert answer.status == 200
    assert answer.seen_headers() == {"content-type": SSE if stream else JSON, "x-request-id": answer.request_id,
                                     "x-labgate-attempts": "2", "x-labgate-provider": "backup",
                                     "x-labgate-deployment": "backup/m-backup"}
    assert text_of(answer, stream=stream) == sims.backup_reply
    assert (len(sims.bodies(kind.model)), len(sims.bodies("m-backup"))) == (1, 1)
    assert attempt_log(gateway, answer.request_id) == {
        "status": 200, "outcome": "ok", "attempts": 2, "deployment": "backup/m-backup",
        "failed_attempts": [{"deployment": kind.deployment, "error": case.code,
                             "message": Matches(case.why(kind.type, stream=stream))}]}


@by_kind
@streamed
def test_every_fallback_failed_names_every_cause(gateway: Any, sims: Any, faults: Any, kind: Kind,
                                                 stream: bool) -> None:
    faults.fault(kind.type, Status(503))
    faults.set(sims.backup, Behaviour(fault=NotJSON()))
    answer = call(gateway, *request(kind.fallback_route, stream=stream))
    backup_cause = ("provider 'backup' sent a stream event that is not JSON: b'<html>simulated proxy page</html>'"
                    if stream else
                    "provider 'backup' sent a body that is not JSON: '<html><body>simulated proxy page</body></html>'")
    assert answer.status == 502
    assert answer.json() == envelope(
        f"All 2 attempt(s) failed: {kind.deployment}: provider '{kind.type}' answered 503: simulated upstream error; "
        f"backup/m-backup: {backup_cause}", "api_error", "all_attempts_failed", request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, attempts="2", provider="backup",
                                                  deployment="backup/m-backup")


@by_kind
def test_every_fallback_rate_limited_is_a_429_with_the_soonest_retry_after(gateway: Any, sims: Any, faults: Any,
                                                                          kind: Kind) -> None:
    faults.fault(kind.type, RateLimit(7))
    faults.set(sims.backup, Behaviour(fault=RateLimit(2)))
    answer = call(gateway, *request(kind.fallback_route))
    assert answer.status == 429
    assert answer.json() == envelope(
        f"All 2 attempt(s) failed: {kind.deployment}: provider '{kind.type}' answered 429: Rate limit reached "
        "(simulated).; backup/m-backup: provider 'backup' answered 429: Rate limit reached (simulated).",
        "rate_limit_error", "all_attempts_failed", request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, retry_after="2", attempts="2", provider="backup",
                                                  deployment="backup/m-backup")


# --- a stream that fails after it started --------------------------------------------------------


@by_kind
@pytest.mark.parametrize("route", ["no-fallback", "fallback"])
def test_stream_cut_after_the_first_chunk_is_not_restarted(gateway: Any, sims: Any, faults: Any, kind: Kind,
                                                           route: str) -> None:
    faults.fault(kind.type, CutStream(kind.first_token_events))
    model = kind.model if route == "no-fallback" else kind.fallback_route
    answer = call(gateway, *request(model, stream=True))
    assert answer.status == 200
    assert answer.seen_headers() == {"content-type": SSE, "x-request-id": answer.request_id,
                                     "x-labgate-attempts": "1", "x-labgate-provider": kind.type,
                                     "x-labgate-deployment": kind.deployment}
    *chunks, last = answer.events()  # the body ended cleanly: no [DONE], one error event
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {"content": " sim1"}]
    cut = re.escape(f"provider '{kind.type}' cut the response short") + ".*"
    assert last == envelope(Matches(cut), "api_error", "upstream_connection_error", request_id=answer.request_id)
    assert sims.bodies("m-backup") == []
    assert attempt_log(gateway, answer.request_id) == {
        "status": 200, "outcome": "stream_error", "attempts": 1, "deployment": kind.deployment,
        "failed_attempts": None}


@by_kind
def test_stream_cut_raises_while_the_sdk_iterates(gateway: Any, faults: Any, kind: Kind) -> None:
    faults.fault(kind.type, CutStream(kind.first_token_events))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0, timeout=10,
                           http_client=http())
    received = []
    with pytest.raises(openai.APIError) as raised:  # raised mid-iteration, after two chunks
        for chunk in client.chat.completions.create(model=kind.model, stream=True,
                                                    messages=[{"role": "user", "content": PROMPT}]):
            received.append(chunk.choices[0].delta.content)
    assert received == ["", " sim1"]
    assert raised.value.message.startswith(f"provider '{kind.type}' cut the response short")
    assert raised.value.body == {"message": raised.value.message, "type": "api_error", "param": None,
                                 "code": "upstream_connection_error"}


@by_kind
def test_stream_stalled_before_its_first_token(gateway: Any, sims: Any, faults: Any, kind: Kind) -> None:
    """The upstream accepts the stream, then sends nothing for longer than the provider's timeout."""
    faults.set(sims.of(kind.type), Behaviour(ttft_s=5), model=kind.model)
    answer = call(gateway, *request(kind.fallback_route, stream=True))
    assert answer.status == 200
    if not kind.opens_before_first_token:  # nothing reached the client yet: the next deployment answers
        assert (answer.headers["x-labgate-provider"], answer.headers["x-labgate-attempts"]) == ("backup", "2")
        assert text_of(answer, stream=True) == sims.backup_reply
        return
    assert (answer.headers["x-labgate-provider"], answer.headers["x-labgate-attempts"]) == (kind.type, "1")
    *chunks, last = answer.events()
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}]
    assert last == envelope(Matches(re.escape(f"provider '{kind.type}' ") + ".+"), "timeout_error",
                            "upstream_timeout", request_id=answer.request_id)
    assert sims.bodies("m-backup") == []


# --- total deadline and circuit ------------------------------------------------------------------------


@by_kind
def test_total_deadline_bounds_a_chain_of_hanging_upstreams(make_gateway: Any, sims: Any, faults: Any,
                                                            kind: Kind) -> None:
    """Three deployments that each may take 0.4 s; the request as a whole may take 0.6 s."""
    providers = {kind.type: sims.provider(kind.type, timeout_s=0.4),
                 "slow-a": sims.provider("openai_compatible", timeout_s=0.4, models=["slow-a"]),
                 "slow-b": sims.provider("openai_compatible", timeout_s=0.4, models=["slow-b"])}
    chain = {"provider": kind.type, "model": kind.model, "fallback_chain": ["slow-a/slow-a", "slow-b/slow-b"]}
    live = make_gateway(providers, {"routing": {"exact_matches": {"chain": chain}}},
                        {"server": {"request_timeout_s": 0.6}})
    faults.fault(kind.type, Hang())
    for model in ("slow-a", "slow-b"):
        faults.set(sims.openai, Behaviour(fault=Hang()), model=model)
    started = time.monotonic()
    answer = call(live, *request("chain"))
    elapsed = time.monotonic() - started
    assert answer.status == 504
    assert answer.json() == envelope(Matches(
        re.escape(f"All 3 attempt(s) failed: {kind.deployment}: provider '{kind.type}' timed out") + ".*"
        + re.escape("; slow-a/slow-a: provider 'slow-a' timed out") + ".*"
        + re.escape("; slow-b/slow-b: the request's total deadline passed before this attempt")),
        "timeout_error", "all_attempts_failed", request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, attempts="2", provider="slow-a",
                                                  deployment="slow-a/slow-a")
    assert 0.55 <= elapsed < 1.0  # the chain alone would take 1.2 s
    assert sims.bodies("slow-b") == []


def circuit_gateway(make_gateway: Any, sims: Any, kind: Kind, *, cooldown_s: float) -> Any:
    return make_gateway(
        {kind.type: sims.provider(kind.type), "backup": sims.backup_provider()},
        {"routing": {"exact_matches": {"fb": {"provider": kind.type, "model": kind.model,
                                              "fallback_chain": ["backup/m-backup"]}}}},
        {"resilience": {"circuit": {"failure_threshold": 2, "cooldown_s": cooldown_s}}})


@by_kind
def test_circuit_opens_after_the_failure_threshold(make_gateway: Any, sims: Any, faults: Any, kind: Kind) -> None:
    live = circuit_gateway(make_gateway, sims, kind, cooldown_s=30)
    faults.fault(kind.type, Status(500))
    attempts = [call(live, *request("fb")).headers["x-labgate-attempts"] for _ in range(3)]
    assert attempts == ["2", "2", "1"]  # the third request skips the open circuit
    assert len(sims.bodies(kind.model)) == 2

    answer = call(live, *request(kind.model))  # its only deployment is cooling down
    assert answer.status == 503
    assert answer.json() == envelope(
        f"No healthy deployment for model '{kind.model}': every candidate is cooling down after repeated "
        f"failures: {kind.deployment} (provider '{kind.type}' answered 500: simulated upstream error)",
        "api_error", "no_healthy_deployment", request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, retry_after="30", attempts="0")
    assert len(sims.bodies(kind.model)) == 2


@by_kind
def test_circuit_lets_one_request_through_after_the_cooldown(make_gateway: Any, sims: Any, faults: Any,
                                                            kind: Kind) -> None:
    live = circuit_gateway(make_gateway, sims, kind, cooldown_s=0.2)
    faults.fault(kind.type, Status(500), fail_first_n=2)  # then the upstream recovers
    assert [call(live, *request("fb")).headers["x-labgate-attempts"] for _ in range(2)] == ["2", "2"]
    assert call(live, *request(kind.model)).status == 503
    time.sleep(0.25)
    answer = call(live, *request(kind.model))
    assert (answer.status, answer.headers["x-labgate-provider"]) == (200, kind.type)
    assert live.deployment(kind.deployment).health.failures == 0


# --- client errors ---------------------------------------------------------------------------------------


def test_invalid_json(gateway: Any, sims: Any) -> None:
    answer = call(gateway, "/v1/chat/completions", content=b'{"model": "m-vllm", "messages": [',
                  headers={"content-type": JSON})
    assert answer.status == 400
    assert answer.json() == envelope(Matches(r"The request body is not valid JSON: .+"), "invalid_request_error",
                                     "invalid_json", request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, retry=False, attempts="0")


@pytest.mark.parametrize(("body", "param", "message"), [
    ([{"model": "m-vllm"}], None, "The request body must be a JSON object."),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model",
     "'model' is required and must be a non-empty string."),
    ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, "model",
     "'model' is required and must be a non-empty string."),
], ids=["not-an-object", "no-model", "model-not-a-string"])
def test_body_without_a_model(gateway: Any, body: Any, param: str | None, message: str) -> None:
    answer = call(gateway, "/v1/chat/completions", body)
    assert answer.status == 400
    code = "invalid_json" if param is None else "invalid_request"
    assert answer.json() == envelope(message, "invalid_request_error", code, param=param,
                                     request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, retry=False, attempts="0")


BAD_FIELDS = [
    ("chat", {"messages": None}, "messages", "'messages' is required and must be a non-empty array."),
    ("chat", {"messages": []}, "messages", "'messages' is required and must be a non-empty array."),
    ("chat", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role",
     "'messages[0].role' must be one of assistant, developer, function, system, tool, user."),
    ("chat", {"temperature": "hot"}, "temperature", "'temperature' must be a number between 0 and 2; got \"hot\"."),
    ("chat", {"max_tokens": 0}, "max_tokens", "'max_tokens' must be an integer ≥ 1; got 0."),
    ("chat", {"stream": "yes"}, "stream", "'stream' must be a boolean; got \"yes\"."),
    ("completions", {"prompt": None}, "prompt", "'prompt' is required: a string or a non-empty array."),
    ("embeddings", {"input": []}, "input", "'input' is required: a string or a non-empty array."),
    ("embeddings", {"stream": True}, "stream", "Embeddings cannot be streamed."),
]


@by_kind
@pytest.mark.parametrize(("endpoint", "fields", "param", "message"), BAD_FIELDS,
                         ids=[f"{e}-{p}-{i}" for i, (e, _, p, _) in enumerate(BAD_FIELDS)])
def test_bad_field(gateway: Any, sims: Any, kind: Kind, endpoint: str, fields: dict, param: str,
                   message: str) -> None:
    path, body = request(kind.model, endpoint)
    body = {k: v for k, v in {**body, **fields}.items() if v is not None}  # None: the field is left out
    answer = call(gateway, path, body)
    assert answer.status == 400
    assert answer.json() == envelope(message, "invalid_request_error", "invalid_request", param=param,
                                     request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, retry=False, attempts="0")
    assert sims.of(kind.type).requests == []


@by_kind
def test_unknown_model_suggests_the_closest_names(gateway: Any, sims: Any, kind: Kind) -> None:
    typo = kind.model[:-1]  # e.g. "m-vll"
    answer = call(gateway, *request(typo))
    assert answer.status == 404
    hint = re.escape(f"The model '{typo}' does not exist or is not routed by this gateway. Did you mean "
                     f"'{kind.model}'")
    assert answer.json() == envelope(Matches(hint + r"(, '[^']+')*\?"), "invalid_request_error",
                                     "model_not_found", param="model", request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, retry=False, attempts="0")
    assert sims.of(kind.type).requests == []


def test_client_request_id_is_echoed_beside_labgates_own(gateway: Any) -> None:
    answer = call(gateway, *request("no-such-model"), headers={"x-request-id": "contract-42"})
    assert (answer.status, answer.headers["x-client-request-id"]) == (404, "contract-42")
    assert answer.request_id.startswith("req_") and answer.json()["request_id"] == answer.request_id
    answer = call(gateway, *request("m-vllm"), headers={"x-request-id": "contract-43"})
    assert (answer.status, answer.headers["x-client-request-id"]) == (200, "contract-43")
    assert gateway.record(answer.request_id)["client_request_id"] == "contract-43"


def test_body_over_the_limit_is_a_413(gateway: Any) -> None:
    limit = gateway.running.gateway.runtime.config.gateway.server.max_body_bytes
    size = limit + 1
    answer = call(gateway, "/v1/chat/completions", content=b" " * size, headers={"content-type": JSON})
    assert answer.status == 413
    assert answer.json() == envelope(f"The request body is {size} bytes; the limit is {limit}.",
                                     "invalid_request_error", "request_too_large", request_id=answer.request_id)
    assert answer.seen_headers() == {**error_headers(answer, retry=False), "connection": "close"}


def test_chunked_body_over_the_limit_is_a_413(gateway: Any) -> None:
    limit = gateway.running.gateway.runtime.config.gateway.server.max_body_bytes
    pieces = iter([b" " * 65536] * (limit // 65536 + 1))
    answer = call(gateway, "/v1/chat/completions", content=pieces, headers={"content-type": JSON})
    assert answer.status == 413
    assert answer.json() == envelope(f"The request body exceeds the limit of {limit} bytes.",
                                     "invalid_request_error", "request_too_large", request_id=answer.request_id)
    assert answer.seen_headers() == {**error_headers(answer, retry=False), "connection": "close"}


def test_unknown_path_is_a_404(gateway: Any) -> None:
    answer = call(gateway, "/v1/nothing-here", {"model": "m-vllm"})
    assert answer.status == 404
    assert answer.json() == envelope("No route for POST /v1/nothing-here.", "invalid_request_error", "not_found",
                                     request_id=answer.request_id)
    assert answer.seen_headers() == error_headers(answer, retry=False)


def test_wrong_method_is_a_405(gateway: Any) -> None:
    answer = call(gateway, "/v1/chat/completions", method="GET")
    assert answer.status == 405
    assert answer.json() == envelope("GET is not allowed on /v1/chat/completions; use POST.",
                                     "invalid_request_error", "method_not_allowed", request_id=answer.request_id)
    assert answer.seen_headers() == {**error_headers(answer, retry=False), "allow": "POST"}


def test_wrong_type_with_non_ascii_text_is_a_400(gateway: Any) -> None:
    """The message quotes the first 60 characters of the value (it once cut a UTF-8 character in two: a 500)."""
    answer = call(gateway, *request("m-vllm", temperature="é" * 40))  # 60 bytes in, "é" is split
    assert answer.status == 400
    quoted = ('"' + "é" * 40 + '"')[:60]
    assert answer.json() == envelope(f"'temperature' must be a number between 0 and 2; got {quoted}.",
                                     "invalid_request_error", "invalid_request", param="temperature",
                                     request_id=answer.request_id)


def test_body_over_the_limit_keeps_the_clients_request_id(gateway: Any) -> None:
    limit = gateway.running.gateway.runtime.config.gateway.server.max_body_bytes
    answer = call(gateway, "/v1/chat/completions", content=b" " * (limit + 1),
                  headers={"content-type": JSON, "x-request-id": "contract-413"})
    assert (answer.status, answer.headers["x-client-request-id"]) == (413, "contract-413")
    assert answer.request_id.startswith("req_") and answer.json()["request_id"] == answer.request_id


def test_head_is_served_wherever_get_is(gateway: Any) -> None:
    answer = call(gateway, "/health", method="HEAD", auth=False)
    assert (answer.status, answer.body) == (200, b"")


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."),
    ({"authorization": "Bearer sk-wrong"}, "Incorrect API key provided."),
    ({"x-api-key": "sk-wrong"}, "Incorrect API key provided."),
    ({"authorization": "Basic c2stbGFiZ2F0ZQ=="}, "Missing API key: send it as 'Authorization: Bearer <key>' or "
                                               "'x-api-key: <key>'."),
], ids=["missing", "wrong-bearer", "wrong-x-api-key", "not-bearer"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models"])
def test_missing_or_wrong_key_is_a_401(gateway: Any, sims: Any, headers: dict, message: str, path: str) -> None:
    if path == "/v1/models":
        answer = call(gateway, path, method="GET", auth=False, headers=headers)
    else:
        answer = call(gateway, *request("m-vllm"), auth=False, headers=headers)
    assert answer.status == 401
    assert answer.json() == envelope(message, "authentication_error", "invalid_api_key",
                                     request_id=answer.request_id)
    expected = error_headers(answer, retry=False)
    if path != "/v1/models":
        expected["x-labgate-attempts"] = "0"
    assert answer.seen_headers() == expected
    assert sims.openai.requests == []


@by_kind
@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_key_is_accepted_as_bearer_or_x_api_key(gateway: Any, kind: Kind, header: str) -> None:
    given = {"authorization": f"Bearer {gateway.key}"} if header == "authorization" else {"x-api-key": gateway.key}
    answer = call(gateway, *request(kind.model), auth=False, headers=given)
    assert (answer.status, text_of(answer, stream=False)) == (200, sim_text(8))


def test_health_needs_no_key(gateway: Any) -> None:
    answer = call(gateway, "/health", method="GET")
    routes = len(gateway.running.gateway.runtime.table.routes)
    providers = len(set(TYPES) - set(IN_PROCESS)) + 1  # one per adapter type served over HTTP, and one more
    assert (answer.status, answer.json()) == (200, {"status": "ok", "providers": providers, "models": routes})


# --- whatever the body, an answer or an envelope -------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
PARTS = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio", "refusal"])},
    optional={"text": JSON_VALUES, "image_url": JSON_VALUES | st.fixed_dictionaries({"url": st.sampled_from(
        ["https://x/y.png", "data:image/png;base64,AAAA", "data:;base64,", "ftp://x", "data:image/png,AAAA"])})})
TOOL_CALLS = st.fixed_dictionaries({}, optional={
    "id": JSON_VALUES, "type": st.sampled_from(["function", "other"]),
    "function": st.fixed_dictionaries({}, optional={
        "name": JSON_VALUES, "arguments": st.sampled_from(['{"a":1}', "[]", "not json", ""]) | JSON_VALUES})})
MESSAGES = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])},
    optional={"content": st.text(max_size=8) | st.lists(PARTS | JSON_VALUES, max_size=3) | JSON_VALUES,
              "tool_calls": st.lists(TOOL_CALLS, max_size=2) | JSON_VALUES, "tool_call_id": JSON_VALUES})
TOOL_DEFS = st.fixed_dictionaries({"type": st.sampled_from(["function", "web"])}, optional={
    "function": st.fixed_dictionaries({}, optional={"name": JSON_VALUES, "parameters": JSON_VALUES})})
WILD_BODIES = st.fixed_dictionaries({"messages": st.lists(MESSAGES, min_size=1, max_size=4)}, optional={
    "tools": st.lists(TOOL_DEFS, max_size=2), "stream": st.booleans(), "n": st.integers(1, 2),
    "tool_choice": st.sampled_from(["auto", "none", "required", "bogus"]) | JSON_VALUES,
    "stop": JSON_VALUES, "temperature": JSON_VALUES, "max_tokens": st.integers(1, 4) | JSON_VALUES,
    "response_format": JSON_VALUES, "parallel_tool_calls": JSON_VALUES, "logprobs": JSON_VALUES,
    "stream_options": JSON_VALUES, "user": JSON_VALUES})


@settings(max_examples=100, deadline=None, database=None)
@seed(int(os.environ["LABGATE_FUZZ_SEED"]))  # fresh per run (tests/conftest.py prints it): new bodies every time
@given(kind=st.sampled_from(KINDS), body=WILD_BODIES)
def test_any_body_gets_an_answer_or_an_envelope(session_gateway: Any, kind: Kind, body: dict[str, Any]) -> None:
    """No body, however odd, makes the gateway fail (500) or show a traceback."""
    answer = call(session_gateway, "/v1/chat/completions", {"model": kind.model, **body})
    assert answer.status in (200, 400), answer.body
    if answer.status == 400:
        data = answer.json()
        assert (sorted(data), sorted(data["error"]), data["request_id"]) == (
            ["error", "request_id"], ["code", "message", "param", "type"], answer.request_id)
    elif body.get("stream") is True:
        assert answer.events()[-1] == "[DONE]"
    else:
        assert answer.json()["object"] == "chat.completion"


# --- the client goes away mid-stream -----------------------------------------------------------------------


def upstream_handlers(sim: Simulator) -> int:
    """Requests the simulator is still answering (it has no public counter for this)."""
    return len(sim._active)


def wait_until_idle(gateway: Any, sim: Simulator, *, within: float) -> float:
    started = time.monotonic()
    while (gateway.inflight(), upstream_handlers(sim)) != ((0, 0), 0):
        assert time.monotonic() - started < within, (gateway.inflight(), upstream_handlers(sim))
        time.sleep(0.01)
    return time.monotonic() - started


@by_kind
@pytest.mark.asyncio
async def test_client_disconnect_mid_stream(gateway: Any, sims: Any, faults: Any, kind: Kind) -> None:
    sim = sims.of(kind.type)
    faults.set(sim, Behaviour(tokens_per_s=20, completion_tokens=40), model=kind.model)  # a 2 s stream
    path, body = request(kind.model, stream=True)
    headers = {"authorization": f"Bearer {gateway.key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        response = await session.post(gateway.url + path, json=body, headers=headers)
        assert response.status == 200
        first = await response.content.readuntil(b"\n\n")
        assert orjson.loads(first.removeprefix(b"data: "))["choices"][0]["delta"] == {"role": "assistant",
                                                                                       "content": ""}
        request_id = response.headers["x-request-id"]
        response.close()  # drops the connection
    await asyncio.to_thread(wait_until_idle, gateway, sim, within=1.0)  # the stream had 2 s to go
    record = gateway.record(request_id)
    assert (record["status"], record["outcome"]) == (499, "client_disconnected")
    faults.restore()  # the gateway serves the next stream as usual
    answer = await asyncio.to_thread(call, gateway, *request(kind.model, stream=True))
    assert (answer.status, text_of(answer, stream=True)) == (200, sim_text(8))


@by_kind
@pytest.mark.asyncio
async def test_client_disconnect_while_the_upstream_thinks(gateway: Any, sims: Any, faults: Any,
                                                          kind: Kind) -> None:
    sim = sims.of(kind.type)
    faults.set(sim, Behaviour(latency_s=2), model=kind.model)
    path, body = request(kind.model)
    headers = {"authorization": f"Bearer {gateway.key}", "x-request-id": f"gone-{kind.type}"}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            await session.post(gateway.url + path, json=body, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=0.2))
    await asyncio.to_thread(wait_until_idle, gateway, sim, within=1.0)
    (record,) = [r for r in gateway.records() if r["client_request_id"] == f"gone-{kind.type}"]
    assert (record["status"], record["outcome"], record["attempts"]) == (499, "client_disconnected", 1)
    faults.restore()
    answer = await asyncio.to_thread(call, gateway, *request(kind.model))
    assert (answer.status, text_of(answer, stream=False)) == (200, sim_text(8))


# --- load ------------------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


async def one_of_many(client: openai.AsyncOpenAI, i: int) -> tuple[str, str]:
    """Request ``i`` of the load test: its model, and what it got back (unique per request for tool calls)."""
    kind = KINDS[i % len(KINDS)]
    tools = i % 4 >= 2
    stream = i % 2 == 1
    options: dict[str, Any] = {"tools": TOOLS, "tool_choice": "required"} if tools else {}
    messages = [{"role": "user", "content": f"request {i}"}]
    if not stream:
        reply = await client.chat.completions.create(model=kind.model, messages=messages, **options)
        message = reply.choices[0].message
        got = message.tool_calls[0].function.arguments if tools else message.content
        return reply.model, got
    got_parts: list[str] = []
    model = ""
    async for chunk in await client.chat.completions.create(model=kind.model, messages=messages, stream=True,
                                                            **options):
        model = chunk.model
        delta = chunk.choices[0].delta
        if tools and delta.tool_calls:
            got_parts.append(delta.tool_calls[0].function.arguments or "")
        elif not tools:
            got_parts.append(delta.content or "")
    return model, "".join(got_parts)


def expected_of_many(i: int) -> tuple[str, str]:
    tools = i % 4 >= 2
    return KINDS[i % len(KINDS)].model, f'{{"query":"request {i}"}}' if tools else sim_text(8)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_300_concurrent_requests(make_gateway: Any, sims: Any) -> None:
    live = make_gateway({k.type: sims.provider(k.type, timeout_s=30) for k in KINDS})
    async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0,
                                  timeout=30) as client:
        results = await asyncio.gather(*(one_of_many(client, i) for i in range(300)))
    assert results == [expected_of_many(i) for i in range(300)]
    assert live.inflight() == (0, 0)


