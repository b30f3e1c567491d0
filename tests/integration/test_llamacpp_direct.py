"""Straight against llama.cpp's real server (xllamacpp, tiny GGUF) — no gateway involved.

The first half checks the happy paths with the official ``openai`` SDK. The second half pins
llama.cpp behaviours a gateway must handle (see ``tests/upstreams/LLAMACPP-QUIRKS.md``); if an
xllamacpp upgrade changes one of them, the matching test fails and the ``llama_cpp`` preset
quirks must be revisited.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# A request's time limit is a hang detector, not a speed check: a handful of tokens took over 10 s on a
# 2-core machine with 4 CPU-burning processes beside the suite (the engine's threads wait for cores).
# Long generations get a limit derived from the measured pace (timeout_for).
TIMEOUT = 60.0
HI = [{"role": "user", "content": "hi"}]
SLOT_CTX = 1024  # the chat server runs n_ctx 4096 over 4 slots; the embedding server too


# ---------------------------------------------------------------- helpers

def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def http(method: str, url: str, body: Any = None, *,
         raw_body: bytes | None = None, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, headers, body) for 2xx and error statuses alike."""
    data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def post_json(url: str, body: Any, *, timeout: float = TIMEOUT) -> tuple[int, Any]:
    status, _, raw = http("POST", url, body, timeout=timeout)
    return status, json.loads(raw)


@pytest.fixture(scope="module")
def seconds_per_token(llamacpp: Any) -> float:
    """This machine's pace right now, from a 64-token generation: a long generation's timeout is derived
    from the work it asks for (a loaded machine is slower at both), never a fixed number of seconds."""
    started = time.monotonic()
    status, r = post_json(llamacpp.chat_url + "/v1/chat/completions",
                          {"model": "tiny", "messages": HI, "max_tokens": 64}, timeout=TIMEOUT)
    assert status == 200 and r["usage"]["completion_tokens"] == 64
    return (time.monotonic() - started) / 64


def timeout_for(tokens: int, seconds_per_token: float) -> float:
    """Ten times the measured pace for ``tokens``, plus the usual per-request allowance."""
    return TIMEOUT + 10 * tokens * seconds_per_token


def sse_events(raw: bytes) -> list[Any]:
    """Parse an SSE body into JSON payloads; the ``[DONE]`` sentinel is kept as the string."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        block = block.strip()
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


# ---------------------------------------------------------------- happy paths (openai SDK)

def test_models_lists_alias(llamacpp: Any) -> None:
    models = client(llamacpp.chat_url).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].owned_by == "llamacpp"
    embed_models = client(llamacpp.embed_url).models.list()
    assert [m.id for m in embed_models.data] == ["tiny-embed"]


def test_chat_non_stream_runs_to_max_tokens(llamacpp: Any) -> None:
    r = client(llamacpp.chat_url).chat.completions.create(model="tiny", messages=HI, max_tokens=8)
    assert r.object == "chat.completion"
    assert r.model == "tiny"
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.startswith(" ")  # whole words: " hello dog ..."
    assert r.usage is not None
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_stream_with_include_usage(llamacpp: Any) -> None:
    stream = client(llamacpp.chat_url).chat.completions.create(
        model="tiny", messages=HI, max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content is None  # role-only first chunk, content null (OpenAI sends "")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert len(text.split()) == 8  # one whole word per token
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_completions(llamacpp: Any) -> None:
    r = client(llamacpp.chat_url).completions.create(model="tiny", prompt="hello world", max_tokens=5)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].text.split()) == 5
    assert r.usage is not None
    assert r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens == 3  # <s> ▁hello ▁world


def test_embeddings_list_input(llamacpp: Any) -> None:
    inputs = ["hello world", "blue dog", "hello world"]
    r = client(llamacpp.embed_url).embeddings.create(model="tiny-embed", input=inputs, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2]
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 64 for v in vecs)  # n_embd: one pooled vector per input, not per token
    assert all(abs(norm(v) - 1.0) < 1e-5 for v in vecs)  # L2-normalised
    assert vecs[0] == vecs[2]
    assert vecs[0] != vecs[1]
    assert r.usage.prompt_tokens == 9  # summed over the inputs (3 tokens each, BOS included)


def test_embeddings_sdk_default_base64_round_trip(llamacpp: Any) -> None:
    """The SDK asks for base64 by default and decodes it; llama.cpp supports it."""
    c = client(llamacpp.embed_url)
    b64 = c.embeddings.create(model="tiny-embed", input="blue dog").data[0].embedding
    flt = c.embeddings.create(model="tiny-embed", input="blue dog", encoding_format="float").data[0].embedding
    assert len(b64) == 64
    assert max(abs(a - b) for a, b in zip(b64, flt, strict=True)) < 1e-6


# ---------------------------------------------------------------- quirks: models, health, routing

def test_quirk_models_payload_shape(llamacpp: Any) -> None:
    status, _, raw = http("GET", llamacpp.chat_url + "/v1/models")
    body = json.loads(raw)
    assert status == 200
    assert body["object"] == "list"
    entry = body["data"][0]
    assert entry["id"] == "tiny" and entry["owned_by"] == "llamacpp" and entry["aliases"] == ["tiny"]
    assert entry["meta"]["n_ctx_train"] == 2048 and entry["meta"]["n_embd"] == 64
    assert entry["meta"]["n_ctx"] == SLOT_CTX  # per slot, not the server total
    assert body["models"][0]["name"] == "tiny"  # extra Ollama-like array next to "data"
    # no retrieve-one-model route
    assert http("GET", llamacpp.chat_url + "/v1/models/tiny")[0] == 404


def test_quirk_health(llamacpp: Any) -> None:
    for url in (llamacpp.chat_url, llamacpp.embed_url):
        for path in ("/health", "/v1/health"):
            status, headers, raw = http("GET", url + path)
            assert status == 200, path
            assert json.loads(raw) == {"status": "ok"}
            assert headers["content-type"].startswith("application/json")


def test_quirk_not_found_shape(llamacpp: Any) -> None:
    for method, path in (("GET", "/nope"), ("GET", "/api/tags"), ("GET", "/v1/chat/completions")):
        status, _, raw = http(method, llamacpp.chat_url + path)
        assert status == 404, path
        assert json.loads(raw) == {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}


@pytest.mark.parametrize("model", ["no-such-model", None])
def test_quirk_any_model_name_is_served_and_renamed(llamacpp: Any, model: str | None) -> None:
    body: dict[str, Any] = {"messages": HI, "max_tokens": 2}
    if model is not None:
        body["model"] = model
    status, r = post_json(llamacpp.chat_url + "/v1/chat/completions", body)
    assert status == 200
    assert r["model"] == "tiny"  # chat answers with its own alias, not the requested name


def test_quirk_embeddings_echo_requested_model(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.embed_url + "/v1/embeddings", {"model": "whatever", "input": "hi"})
    assert status == 200 and r["model"] == "whatever"  # unlike chat: echoed verbatim
    status, r = post_json(llamacpp.embed_url + "/v1/embeddings", {"input": "hi"})
    assert status == 200 and r["model"] == "tiny-embed"


# ---------------------------------------------------------------- quirks: request parameters

def test_quirk_max_completion_tokens_honoured_and_wins(llamacpp: Any) -> None:
    url = llamacpp.chat_url + "/v1/chat/completions"
    _, r = post_json(url, {"model": "tiny", "messages": HI, "max_completion_tokens": 3})
    assert r["usage"]["completion_tokens"] == 3
    _, r = post_json(url, {"model": "tiny", "messages": HI, "max_tokens": 3, "max_completion_tokens": 5})
    assert r["usage"]["completion_tokens"] == 5


def test_quirk_openai_only_params_accepted_and_ignored(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.chat_url + "/v1/chat/completions", {
        "model": "tiny", "messages": HI, "max_tokens": 3,
        "parallel_tool_calls": True, "service_tier": "auto", "store": False, "metadata": {"k": "v"},
        "user": "u", "reasoning_effort": "low", "frequency_penalty": 0.1, "presence_penalty": 0.1,
        "logit_bias": {}, "prediction": {"type": "content", "content": "x"}, "modalities": ["text"],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "required",
    })
    assert status == 200
    assert r["choices"][0]["finish_reason"] == "length"
    assert "tool_calls" not in r["choices"][0]["message"]  # tool_choice "required" is not enforced here
    assert "service_tier" not in r


def test_quirk_null_params_accepted(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.chat_url + "/v1/chat/completions", {
        "model": None, "messages": HI, "max_tokens": 2, "temperature": None, "top_p": None, "stop": None,
        "tools": None, "tool_choice": None, "response_format": None, "seed": None, "n": None,
        "logprobs": None, "stream": None, "stream_options": None, "user": None,
    })
    assert status == 200 and r["usage"]["completion_tokens"] == 2


def test_quirk_logprobs(llamacpp: Any) -> None:
    r = client(llamacpp.chat_url).chat.completions.create(
        model="tiny", messages=HI, max_tokens=2, logprobs=True, top_logprobs=2)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 2
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 and t.bytes for t in lp.content)


def test_quirk_n_choices_usage_not_summed(llamacpp: Any) -> None:
    url = llamacpp.chat_url + "/v1/chat/completions"
    status, r = post_json(url, {"model": "tiny", "messages": HI, "max_tokens": 4, "n": 3})
    assert status == 200
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] == "length" for c in r["choices"])
    assert r["usage"]["completion_tokens"] == 4  # one choice's count, NOT 3 * 4
    status, err = post_json(url, {"model": "tiny", "messages": HI, "max_tokens": 2, "n": 5})
    assert status == 400  # n is capped at the number of slots (4)
    assert "between 1 <= value <= 4" in err["error"]["message"]


def test_quirk_n_choices_stream_one_usage_chunk_per_choice(llamacpp: Any) -> None:
    status, _, raw = http("POST", llamacpp.chat_url + "/v1/chat/completions", {
        "model": "tiny", "messages": HI, "max_tokens": 2, "n": 2, "stream": True,
        "stream_options": {"include_usage": True}})
    assert status == 200
    events = sse_events(raw)
    usage_chunks = [e for e in events if isinstance(e, dict) and e.get("usage")]
    assert len(usage_chunks) == 2
    assert all(e["choices"] == [] and e["usage"]["completion_tokens"] == 2 for e in usage_chunks)
    role_chunks = [e for e in events if isinstance(e, dict) and e["choices"] and "role" in e["choices"][0]["delta"]]
    assert sorted(e["choices"][0]["index"] for e in role_chunks) == [0, 1]


def test_quirk_response_format_json_rejected(llamacpp: Any) -> None:
    """With this build and a ChatML template, any JSON response_format fails at sampler init (400)."""
    url = llamacpp.chat_url + "/v1/chat/completions"
    for rf in ({"type": "json_object"},
               {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}):
        status, r = post_json(url, {"model": "tiny", "messages": HI, "max_tokens": 3, "response_format": rf})
        assert status == 400, rf
        assert r["error"]["type"] == "invalid_request_error"
        assert "Failed to initialize samplers" in r["error"]["message"]
    status, r = post_json(url, {"model": "tiny", "messages": HI, "max_tokens": 3, "response_format": {"type": "text"}})
    assert status == 200
    status, r = post_json(url, {"model": "tiny", "messages": HI, "max_tokens": 3, "response_format": {"type": "x"}})
    assert status == 400


@pytest.mark.timeout(600)  # the request's own timeout is derived from the measured pace
def test_quirk_max_tokens_absent_fills_slot_context(llamacpp: Any, seconds_per_token: float) -> None:
    status, r = post_json(llamacpp.chat_url + "/v1/chat/completions", {"model": "tiny", "messages": HI},
                          timeout=timeout_for(SLOT_CTX, seconds_per_token))  # ~1000 tokens: the whole slot
    assert status == 200
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["total_tokens"] == SLOT_CTX  # generated until the slot's context is full


def test_quirk_max_tokens_zero_still_generates_one(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.chat_url + "/v1/chat/completions",
                          {"model": "tiny", "messages": HI, "max_tokens": 0})
    assert status == 200
    assert r["usage"]["completion_tokens"] == 1 and r["choices"][0]["finish_reason"] == "length"


def test_quirk_stop_and_greedy_determinism(llamacpp: Any) -> None:
    c = client(llamacpp.chat_url)
    a = c.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=0)
    b = c.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    s1 = c.chat.completions.create(model="tiny", messages=HI, max_tokens=6, seed=42)
    s2 = c.chat.completions.create(model="tiny", messages=HI, max_tokens=6, seed=42)
    assert s1.choices[0].message.content == s2.choices[0].message.content
    words = (a.choices[0].message.content or "").split()
    stop_word = next(w for w in words[1:] if w != "gate")  # " gate" would also match inside " gateway"
    r = c.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=0, stop=[" " + stop_word])
    assert r.choices[0].finish_reason == "stop"
    assert (r.choices[0].message.content or "").split() == words[: words.index(stop_word)]  # stop text excluded
    assert r.usage is not None and r.usage.completion_tokens == words.index(stop_word) + 1  # counts the stop token


def test_quirk_assistant_prefill_is_continued(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.chat_url + "/v1/chat/completions", {
        "model": "tiny", "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure:"}]})
    assert status == 200
    assert r["choices"][0]["message"]["content"].startswith("Sure: ")  # the prefix is echoed back


def test_quirk_lenient_messages(llamacpp: Any) -> None:
    url = llamacpp.chat_url + "/v1/chat/completions"
    for messages in ([], [{"role": "bogus", "content": "x"}], [{"role": "developer", "content": "x"}, *HI],
                     [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]):
        status, _ = post_json(url, {"model": "tiny", "messages": messages, "max_tokens": 1})
        assert status == 200, messages


# ---------------------------------------------------------------- quirks: error bodies

@pytest.mark.parametrize(("body", "message"), [
    ({"model": "tiny", "max_tokens": 2}, "'messages' is required"),
    ({"model": "tiny", "messages": "bad"}, "Expected 'messages' to be an array"),
    ({"model": "tiny", "messages": [{"role": "user"}]}, "All non-assistant messages must contain 'content'"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, "Expected 'content' to be a string or an array"),
    ({"model": "tiny", "messages": HI, "max_tokens": "two"}, "Field 'max_tokens': [json.exception.type_error.302]"),
    ({"model": "tiny", "messages": HI, "max_tokens": -5}, "Field 'max_tokens': Value must be between -1"),
    ({"model": "tiny", "messages": HI, "temperature": "hot"}, "Field 'temperature'"),
    ({"model": "tiny", "messages": HI, "stream": "yes"}, "Field 'stream'"),
])
def test_quirk_bad_request_error_shape(llamacpp: Any, body: dict[str, Any], message: str) -> None:
    status, headers, raw = http("POST", llamacpp.chat_url + "/v1/chat/completions", body)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    err = json.loads(raw)
    assert set(err) == {"error"}
    assert set(err["error"]) == {"code", "message", "type"}  # no "param"; code is the int status
    assert err["error"]["code"] == 400 and err["error"]["type"] == "invalid_request_error"
    assert message in err["error"]["message"]


def test_quirk_invalid_json_body(llamacpp: Any) -> None:
    status, _, raw = http("POST", llamacpp.chat_url + "/v1/chat/completions", raw_body=b"not json")
    assert status == 400
    err = json.loads(raw)["error"]
    assert err["type"] == "invalid_request_error" and "parse_error" in err["message"]


def test_quirk_sdk_maps_400(llamacpp: Any) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client(llamacpp.chat_url).chat.completions.create(model="tiny", messages=HI, max_tokens=2, n=9)
    assert ei.value.status_code == 400


@pytest.mark.parametrize("stream", [False, True])
def test_quirk_context_exceeded(llamacpp: Any, stream: bool) -> None:
    long_text = " ".join(["hello"] * 1500)
    status, headers, raw = http("POST", llamacpp.chat_url + "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": long_text}], "max_tokens": 2, "stream": stream})
    assert status == 400  # also for stream=true: a plain JSON error before any SSE
    assert headers["content-type"].startswith("application/json")
    err = json.loads(raw)["error"]
    assert err["type"] == "exceed_context_size_error"
    assert err["n_ctx"] == SLOT_CTX and err["n_prompt_tokens"] > SLOT_CTX
    assert "exceeds the available context size" in err["message"]


def test_quirk_image_part_is_500(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.chat_url + "/v1/chat/completions", {
        "model": "tiny", "max_tokens": 1,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})
    assert status == 500
    assert r["error"]["type"] == "server_error" and "image input is not supported" in r["error"]["message"]


# ---------------------------------------------------------------- quirks: streaming

def test_quirk_stream_without_stream_options(llamacpp: Any) -> None:
    status, headers, raw = http("POST", llamacpp.chat_url + "/v1/chat/completions",
                                {"model": "tiny", "messages": HI, "max_tokens": 3, "stream": True})
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'": ' not in raw  # compact JSON
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert all("usage" not in c for c in chunks)  # no usage at all unless include_usage
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "length" and last["choices"][0]["delta"] == {}
    assert last["timings"]["predicted_n"] == 3  # non-standard "timings" carries the counts instead
    assert "logprobs" not in chunks[1]["choices"][0]  # absent, not null


def test_quirk_completions_endpoint(llamacpp: Any) -> None:
    url = llamacpp.chat_url + "/v1/completions"
    status, r = post_json(url, {"model": "x", "prompt": ["hello", "blue dog"], "max_tokens": 3})
    assert status == 200
    assert r["id"].startswith("chatcmpl-")  # not "cmpl-"
    assert r["model"] == "tiny"
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert r["usage"]["completion_tokens"] == 3  # one prompt's count, NOT summed over the 2 prompts
    status, r = post_json(url, {"prompt": "hello", "max_tokens": 2, "echo": True, "logprobs": 1})
    assert not r["choices"][0]["text"].startswith("hello")  # echo ignored
    assert "content" in r["choices"][0]["logprobs"]  # chat-style logprobs, not tokens/token_logprobs
    status, _, raw = http("POST", url, {"prompt": "hi", "max_tokens": 2, "stream": True})
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    assert "role" not in json.dumps(events[0])
    final = events[-2]
    assert final["choices"][0]["finish_reason"] == "length" and final["choices"][0]["text"] == ""
    assert final["usage"]["completion_tokens"] == 2  # usage in the finish chunk, without stream_options


# ---------------------------------------------------------------- quirks: embeddings

def test_quirk_embeddings_params(llamacpp: Any) -> None:
    url = llamacpp.embed_url + "/v1/embeddings"
    _, flt = post_json(url, {"input": "hello", "encoding_format": "float"})
    _, b64 = post_json(url, {"input": "hello", "encoding_format": "base64"})
    raw = base64.b64decode(b64["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)  # little-endian float32
    assert max(abs(a - b) for a, b in zip(decoded, flt["data"][0]["embedding"], strict=True)) < 1e-6
    _, dims = post_json(url, {"input": "hello", "dimensions": 8})
    assert len(dims["data"][0]["embedding"]) == 64  # "dimensions" silently ignored
    _, toks = post_json(url, {"input": [[360, 365], [1]]})  # token-id arrays accepted
    assert len(toks["data"]) == 2
    status, err = post_json(url, {"input": []})
    assert status == 400 and err["error"]["message"] == '"input" must not be empty'
    status, err = post_json(url, {"input": "hello", "encoding_format": "bogus"})
    assert status == 400 and err["error"]["type"] == "invalid_request_error"
    status, _ = post_json(url, {"input": ""})
    assert status == 200  # empty string embeds the BOS token


def test_quirk_embeddings_too_long_is_500(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.embed_url + "/v1/embeddings", {"input": " ".join(["hello"] * 700)})
    assert status == 500  # a client error, reported as a server error
    assert r["error"]["type"] == "server_error" and "too large to process" in r["error"]["message"]


def test_quirk_embeddings_disabled_is_501(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.chat_url + "/v1/embeddings", {"input": "hi"})
    assert status == 501
    assert r["error"]["type"] == "not_supported_error"


def test_quirk_embedding_server_still_chats(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.embed_url + "/v1/chat/completions", {"messages": HI, "max_tokens": 2})
    assert status == 200 and r["model"] == "tiny-embed"


# ---------------------------------------------------------------- other dialects on the same server

def test_quirk_responses_and_messages_endpoints_exist(llamacpp: Any) -> None:
    status, r = post_json(llamacpp.chat_url + "/v1/responses", {"model": "x", "input": "hi", "max_output_tokens": 3})
    assert status == 200 and r["object"] == "response" and r["usage"]["output_tokens"] == 3
    status, r = post_json(llamacpp.chat_url + "/v1/messages", {"model": "x", "messages": HI, "max_tokens": 3})
    assert status == 200 and r["type"] == "message" and r["stop_reason"] == "max_tokens"
    assert r["usage"]["output_tokens"] == 3
