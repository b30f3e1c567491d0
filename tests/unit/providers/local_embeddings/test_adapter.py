"""The adapter on a tiny generated BERT (bge layout): OpenAI semantics, limits, loading."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import pytest_asyncio

from labgate.config.load import build_config
from labgate.errors import (
    LabgateError,
    ModelNotFoundError,
    RequestError,
    UnsupportedEndpointError,
    UpstreamTimeoutError,
)
from labgate.providers.base import Call
from labgate.providers.local_embeddings import adapter as adapter_module
from labgate.providers.local_embeddings.adapter import LocalEmbeddingsAdapter
from labgate.providers.local_embeddings.config import LocalEmbeddingsConfig

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"
if TYPE_CHECKING:
    import numpy as np
else:
    np = pytest.importorskip("numpy", reason=EXTRA)
pytest.importorskip("onnxruntime", reason=EXTRA)

MODEL = "bge-tiny"


def config(weights_dir: Path, cache: Path, **options: Any) -> LocalEmbeddingsConfig:
    weights = {"weights_dir": str(weights_dir), **options.pop("weights", {})}
    entry = {"type": "local_embeddings", "models": [MODEL], "weights": {MODEL: weights},
             "cache_dir": str(cache), **options}
    provider = build_config({"providers": {"providers": {"local": entry}}}, {}, source="test").providers["local"]
    assert isinstance(provider, LocalEmbeddingsConfig)
    return provider


@pytest_asyncio.fixture
async def make(tiny_dir: Path, tmp_path: Path) -> AsyncIterator[Any]:
    built: list[LocalEmbeddingsAdapter] = []

    def make(weights_dir: Path = tiny_dir, **options: Any) -> LocalEmbeddingsAdapter:
        built.append(LocalEmbeddingsAdapter(config(weights_dir, tmp_path / "cache", **options), name="local"))
        return built[-1]

    yield make
    for adapter in built:
        await adapter.aclose()


async def embed(adapter: LocalEmbeddingsAdapter, given: Any, model: str = MODEL, timeout: float = 10.0,
                **body: Any) -> dict[str, Any]:
    reply = await adapter.send(Call("embeddings", {"model": model, "input": given, **body}, model, timeout, "req"))
    parsed = orjson.loads(reply.body)
    assert reply.usage is not None and reply.usage.prompt_tokens == parsed["usage"]["prompt_tokens"]
    return parsed


def vectors(reply: dict[str, Any]) -> np.ndarray:
    return np.array([d["embedding"] for d in reply["data"]], dtype=np.float64)


async def refused(adapter: LocalEmbeddingsAdapter, given: Any, **body: Any) -> tuple[int, str, str | None]:
    with pytest.raises(RequestError) as caught:
        await embed(adapter, given, **body)
    return caught.value.status, caught.value.message, caught.value.param


SENTENCES = ["the cat sat on the mat.", "hello world", "a fast gateway runs", "dog"]


@pytest.mark.asyncio
async def test_vectors_match_the_oracle_and_batches_match_singles(make: Any, bert: ModuleType,
                                                                  tiny_dir: Path) -> None:
    adapter = make()
    oracle = bert.Oracle(tiny_dir, pooling="cls", normalize=True, max_tokens=64)
    batched = await embed(adapter, SENTENCES)
    assert [(d["object"], d["index"]) for d in batched["data"]] == [("embedding", i) for i in range(4)]
    expected = np.stack([oracle.embed(s) for s in SENTENCES])
    assert np.abs(vectors(batched) - expected).max() <= 1e-5
    singles = np.concatenate([vectors(await embed(adapter, s)) for s in SENTENCES])
    assert np.abs(singles - vectors(batched)).max() <= 1e-6
    tokens = sum(len(oracle.ids(s)) for s in SENTENCES)
    assert (batched["model"], batched["usage"]) == (MODEL, {"prompt_tokens": tokens, "total_tokens": tokens})


@pytest.mark.asyncio
async def test_concurrent_requests_get_their_own_vectors(make: Any, bert: ModuleType, tiny_dir: Path) -> None:
    adapter = make(max_batch=3)
    oracle = bert.Oracle(tiny_dir, pooling="cls", normalize=True, max_tokens=64)
    replies = await asyncio.gather(*(embed(adapter, [s, "dog"]) for s in SENTENCES * 3))
    for sentence, reply in zip(SENTENCES * 3, replies, strict=True):
        assert np.abs(vectors(reply) - np.stack([oracle.embed(sentence), oracle.embed("dog")])).max() <= 1e-5


@pytest.mark.asyncio
async def test_base64_encoding_carries_the_same_float32_vectors(make: Any) -> None:
    adapter = make()
    floats = vectors(await embed(adapter, SENTENCES[:2]))
    encoded = await embed(adapter, SENTENCES[:2], encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in encoded["data"]])
    assert np.array_equal(decoded, floats.astype(np.float32))


@pytest.mark.asyncio
async def test_token_arrays_are_decoded_with_the_models_tokenizer(make: Any, bert: ModuleType) -> None:
    adapter = make()
    words = bert.WORDS
    ids = [words.index(w) for w in ("the", "cat", "sat")]
    from_tokens = await embed(adapter, [ids, [words.index("dog")]])
    from_text = await embed(adapter, ["the cat sat", "dog"])
    assert np.array_equal(vectors(from_tokens), vectors(from_text))
    assert vectors(await embed(adapter, ids)).shape == (1, 32)  # one flat token array


@pytest.mark.asyncio
async def test_token_arrays_outside_the_vocabulary_or_refused_by_config(make: Any, bert: ModuleType) -> None:
    vocab = len(bert.WORDS)
    assert await refused(make(), [[5, vocab]]) == (
        400, f"'input[0]' holds token id {vocab}, outside bge-tiny's vocabulary (0..{vocab - 1}); token arrays "
        "are ids of the model's own tokenizer.", "input[0]")
    assert await refused(make(), [[5], [-1]]) == (
        400, f"'input[1]' holds token id -1, outside bge-tiny's vocabulary (0..{vocab - 1}); token arrays "
        "are ids of the model's own tokenizer.", "input[1]")
    assert await refused(make(), [[0, 2, 3]]) == (400, "'input[0]' decodes to empty text.", "input[0]")
    assert await refused(make(token_inputs="refuse"), [5, 6]) == (
        400, "bge-tiny does not take token arrays here; send text.", "input[0]")


@pytest.mark.asyncio
async def test_an_input_over_the_models_length_is_a_400_or_cut_when_configured(make: Any, bert: ModuleType,
                                                                              tiny_dir: Path) -> None:
    long = "the cat " * 40  # 80 words + [CLS] [SEP]; the tiny model takes 64
    assert await refused(make(), ["dog", long]) == (
        400, "'input[1]' is 82 tokens long; bge-tiny takes at most 64 (shorten it, or set `truncate: true` "
        "on the provider).", "input[1]")
    assert await refused(make(weights={"max_tokens": 8}), "the cat sat on the mat .") == (
        400, "'input[0]' is 9 tokens long; bge-tiny takes at most 8 (shorten it, or set `truncate: true` on the "
        "provider).", "input[0]")
    cut = await embed(make(truncate=True), long)
    oracle = bert.Oracle(tiny_dir, pooling="cls", normalize=True, max_tokens=64)
    ids = oracle.ids(long)
    assert cut["usage"]["prompt_tokens"] == 64
    assert np.abs(vectors(cut)[0] - oracle.forward(ids[:63] + ids[-1:])).max() <= 1e-5


@pytest.mark.asyncio
async def test_long_requests_are_tokenized_off_the_loop_and_still_checked(make: Any) -> None:
    adapter = make(max_inputs=200)
    texts = ["the cat sat on the mat and the dog sat on the cat"] * 150  # > INLINE_TOKENIZE_CHARS
    assert sum(map(len, texts)) > adapter_module.INLINE_TOKENIZE_CHARS
    reply = await embed(adapter, texts)
    assert len(reply["data"]) == 150 and reply["usage"]["prompt_tokens"] == 150 * 15
    assert (await refused(adapter, [*texts, "the cat " * 40]))[2] == "input[150]"


@pytest.mark.asyncio
async def test_too_many_inputs_is_a_400(make: Any) -> None:
    assert await refused(make(max_inputs=3), ["a", "b", "c", "d"]) == (
        400, "'input' has 4 items; at most 3 per request.", "input")


@pytest.mark.asyncio
async def test_dimensions_refused_unless_the_model_is_matryoshka(make: Any) -> None:
    plain = make()
    assert await refused(plain, "dog", dimensions=16) == (
        400, "bge-tiny cannot shorten its embeddings: 'dimensions' must be 32 or absent.", "dimensions")
    assert vectors(await embed(plain, "dog", dimensions=32)).shape == (1, 32)
    nested = make(weights={"matryoshka": True})
    full = vectors(await embed(nested, "dog"))[0]
    short = vectors(await embed(nested, "dog", dimensions=8))[0]
    assert np.abs(short - full[:8] / np.linalg.norm(full[:8])).max() <= 1e-6
    assert await refused(nested, "dog", dimensions=33) == (400, "'dimensions' is at most 32 for bge-tiny.",
                                                           "dimensions")


@pytest.mark.asyncio
async def test_a_model_this_provider_does_not_serve_is_a_404_with_suggestions(make: Any) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        await embed(make(), "dog", model="bge-tin")
    assert caught.value.message == ("The model 'bge-tin' does not exist or is not routed by this gateway. "
                                    "Did you mean 'bge-tiny'?")


@pytest.mark.asyncio
async def test_streaming_is_refused(make: Any) -> None:
    with pytest.raises(UnsupportedEndpointError):
        await make().stream(Call("embeddings", {"model": MODEL, "input": "x"}, MODEL, 1.0, "r"))


@pytest.mark.asyncio
async def test_a_pass_slower_than_the_attempts_timeout_is_an_upstream_timeout(make: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = make()
    await embed(adapter, "dog")  # loaded
    engine = adapter._models[MODEL].engine
    assert engine is not None
    slow_run = engine.run

    def slow(batch: list[list[int]]) -> Any:
        import time
        time.sleep(0.3)
        return slow_run(batch)

    monkeypatch.setattr(adapter._models[MODEL].batcher, "_run", slow)
    with pytest.raises(UpstreamTimeoutError, match=r"took longer than 0\.05 s"):
        await embed(adapter, "dog", timeout=0.05)


@pytest.mark.asyncio
async def test_lazy_loading_happens_once_on_the_first_requests_and_is_logged(
        make: Any, tmp_path: Path, bert: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="labgate.embeddings")
    fresh = bert.write_tiny_bert(tmp_path / "lazy", seed=43)  # weights no other test loaded
    adapter = make(fresh, load="lazy")
    assert adapter._models[MODEL].loading is None
    await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if "loaded bge-tiny" in r.getMessage()]
    await asyncio.gather(*(embed(adapter, "dog") for _ in range(3)))  # three waiters, one load
    [message] = [r.getMessage() for r in caplog.records if "loaded bge-tiny" in r.getMessage()]
    assert message.startswith("embeddings: loaded bge-tiny in ")


@pytest.mark.asyncio
async def test_two_runtimes_share_one_engine(make: Any, tiny_dir: Path, tmp_path: Path) -> None:
    first, second = make(), make()
    await embed(first, "dog")
    await embed(second, "dog")
    assert first._models[MODEL].engine is second._models[MODEL].engine


@pytest.mark.asyncio
async def test_start_loading_logs_the_load_time(tmp_path: Path, bert: ModuleType,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="labgate.embeddings")
    fresh = bert.write_tiny_bert(tmp_path / "fresh", seed=42)  # weights no other test loaded
    adapter = LocalEmbeddingsAdapter(config(fresh, tmp_path / "cache"), name="local")
    try:
        loading = adapter._models[MODEL].loading
        assert loading is not None  # started in the background as the runtime was built
        await loading
        [message] = [r.getMessage() for r in caplog.records if "loaded bge-tiny" in r.getMessage()]
        assert message.startswith("embeddings: loaded bge-tiny in ") and "(built graph " in message
    finally:
        await adapter.aclose()


@pytest.mark.asyncio
async def test_a_model_that_cannot_load_fails_each_request_clearly_then_recovers(
        tmp_path: Path, bert: ModuleType) -> None:
    directory = bert.write_tiny_bert(tmp_path / "w", seed=7)
    adapter = LocalEmbeddingsAdapter(config(directory, tmp_path / "cache", load="lazy"), name="local")
    try:
        (directory / "model.safetensors").write_bytes(b"not safetensors")
        with pytest.raises(LabgateError) as caught:
            await embed(adapter, "dog")
        assert caught.value.status == 502 and "cannot load embedding model 'bge-tiny'" in caught.value.message
        bert.write_tiny_bert(directory, seed=7)  # fixed on disk: the next request loads it
        assert vectors(await embed(adapter, "dog")).shape == (1, 32)
    finally:
        await adapter.aclose()


@pytest.mark.asyncio
async def test_passes_run_on_worker_threads_at_a_lower_priority(make: Any) -> None:
    import os
    import threading

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    adapter = make(nice=7)
    await embed(adapter, "dog")
    batcher = adapter._models[MODEL].batcher
    assert batcher is not None
    run, seen = batcher._run, []

    def spy(batch: list[list[int]]) -> Any:
        seen.append((threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return run(batch)

    batcher._run = spy
    await embed(adapter, "dog")
    [(tid, priority)] = seen
    assert tid != threading.get_native_id()  # not the event loop's thread
    assert priority == min(19, base + 7)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the loop's thread is untouched


def test_built_outside_an_event_loop_it_loads_at_once(tiny_dir: Path, tmp_path: Path) -> None:
    adapter = LocalEmbeddingsAdapter(config(tiny_dir, tmp_path / "cache"), name="local")
    try:
        assert adapter._models[MODEL].engine is not None and adapter._models[MODEL].loading is None
        reply = asyncio.run(adapter.send(Call("embeddings", {"model": MODEL, "input": "dog"}, MODEL, 10.0, "r")))
        assert len(orjson.loads(reply.body)["data"][0]["embedding"]) == 32
    finally:
        asyncio.run(adapter.aclose())


EXITS_DURING_A_LOAD = """
import asyncio, sys, time
from labgate.config.load import build_config
from labgate.providers.local_embeddings import adapter as module

def slow(key):  # a model load that takes (far) longer than the process's life
    print("loading", flush=True)
    time.sleep(600)

module.engine_for = slow
entry = {"type": "local_embeddings", "models": ["bge-tiny"], "weights": {"bge-tiny": {"weights_dir": sys.argv[1]}},
         "cache_dir": sys.argv[2]}
config = build_config({"providers": {"providers": {"local": entry}}}, {}, source="test").providers["local"]

async def main():
    adapter = module.LocalEmbeddingsAdapter(config, name="local")  # load: start
    while True:
        await asyncio.sleep(0.01)
        if adapter._models["bge-tiny"].loading is not None:
            break
    await adapter.aclose()

asyncio.run(main())
print("stopped", flush=True)
"""


def test_a_process_stopping_while_a_model_loads_exits_without_waiting_for_the_load(
        tiny_dir: Path, tmp_path: Path) -> None:
    """The load runs on a daemon thread: the interpreter joins pool threads at exit, so a load there held a
    stopping gateway (SIGTERM) until it was done: more than 30 s beside 4 CPU burners."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", EXITS_DURING_A_LOAD, str(tiny_dir), str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120)  # a hang guard: the load sleeps 600 s
    assert (done.returncode, done.stdout.split()) == (0, ["loading", "stopped"]), done.stderr
