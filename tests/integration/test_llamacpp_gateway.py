"""labgate in front of a real llama.cpp server (xllamacpp, tiny generated model).

The tiny model never emits EOS, so every completion runs to ``max_tokens``
with ``finish_reason: "length"`` — token counts are exact.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from labgate.server.serve import RunningGateway
from labgate.telemetry.logs import AccessLog
from labgate.testing.gateway import config_from, gateway_in_thread

pytestmark = pytest.mark.integration


class Captured(io.BytesIO):
    """An access-log stream the test can read back."""

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture(scope="module")
def gateway(llamacpp: Any) -> Iterator[tuple[RunningGateway, Captured]]:
    config = config_from({
        "llama": {"type": "llama_cpp", "base_url": llamacpp.chat_url,
                  "models": [{"name": "tiny", "alias": "local-chat", "capabilities": ["chat"]}]},
        "llama-embed": {"type": "llama_cpp", "base_url": llamacpp.embed_url, "models": ["tiny-embed"]},
    })
    log = Captured()
    with gateway_in_thread(config, access_log=AccessLog(log)) as running:
        yield running, log


@pytest.fixture
def client(gateway: tuple[RunningGateway, Captured]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway[0].url + "/v1", api_key="unused", max_retries=0, timeout=20)


def record_of(gateway: tuple[RunningGateway, Captured], request_id: str) -> dict[str, Any]:
    """The access-log line of one request; a stream's is written just after its last byte went out."""
    running, log = gateway
    deadline = time.monotonic() + 30
    while True:
        running.gateway.runtime.access_log.flush()
        found = [line for line in log.lines() if line["client_request_id"] == request_id]  # the id sent
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} records for {request_id}"
            return found[0]
        time.sleep(0.02)


def test_models_lists_the_configured_names(client: openai.OpenAI) -> None:
    models = {m.id: m.model_dump() for m in client.models.list()}
    assert set(models) == {"tiny", "local-chat", "tiny-embed"}
    assert models["local-chat"]["provider"] == "llama"
    assert models["local-chat"]["capabilities"] == ["chat"]


def test_chat_non_stream_counts_tokens_exactly(client: openai.OpenAI,
                                               gateway: tuple[RunningGateway, Captured]) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="local-chat", max_tokens=8, messages=[{"role": "user", "content": "hello gateway"}],
        extra_headers={"x-request-id": "itest-chat-8"})
    reply = raw.parse()
    assert raw.headers["x-labgate-provider"] == "llama"
    assert raw.headers["x-labgate-deployment"] == "llama/tiny"
    assert raw.headers["x-labgate-attempts"] == "1"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert len(reply.choices[0].message.content.split()) == 8
    record = record_of(gateway, "itest-chat-8")
    assert (record["model"], record["deployment"], record["status"], record["completion_tokens"],
            record["finish_reason"]) == ("local-chat", "llama/tiny", 200, 8, "length")


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="tiny", max_tokens=6, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hello"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_stream_without_usage_request_still_records_tokens(
        client: openai.OpenAI, gateway: tuple[RunningGateway, Captured]) -> None:
    """llama.cpp sends usage only when asked: labgate asks, records it, and hides it from the client."""
    chunks = list(client.chat.completions.create(
        model="tiny", max_tokens=5, stream=True, messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-request-id": "itest-stream-5"}))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    record = record_of(gateway, "itest-stream-5")
    assert (record["stream"], record["completion_tokens"], record["finish_reason"]) == (True, 5, "length")
    assert record["ttft_ms"] is not None and record["ttft_ms"] <= record["latency_ms"]


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", max_completion_tokens=3, messages=[{"role": "user", "content": "hello"}])
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt="hello", max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="tiny-embed", input=["hello gateway", "tiny blue dog"])
    assert [d.index for d in result.data] == [0, 1]
    assert {len(d.embedding) for d in result.data} == {64}
    norms = [sum(x * x for x in d.embedding) ** 0.5 for d in result.data]
    assert norms == pytest.approx([1.0, 1.0], abs=1e-4)


def test_image_on_a_text_model_is_a_client_error_not_a_fallback(
        client: openai.OpenAI, gateway: tuple[RunningGateway, Captured]) -> None:
    """llama.cpp answers 500 for this; labgate's llama_cpp quirks make it a 400 that is not retried."""
    png = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
           "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": png}}]}])
    assert caught.value.status_code == 400
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "image input is not supported" in caught.value.message
    health = gateway[0].gateway.runtime.table.deployments["llama/tiny"].health
    assert health.failures == 0  # a client problem does not count against the engine


def test_health_providers_reaches_the_engine(gateway: tuple[RunningGateway, Captured]) -> None:
    import urllib.request

    with urllib.request.urlopen(gateway[0].url + "/health/providers", timeout=10) as resp:
        report = orjson.loads(resp.read())["providers"]
    assert report["llama"]["reachable"] is True
    assert report["llama"]["models"] == ["tiny"]
    assert report["llama"]["missing_models"] == []
