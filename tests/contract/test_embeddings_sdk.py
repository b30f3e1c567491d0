"""The official ``openai`` SDK's ``embeddings.create`` through the gateway, on ``local_embeddings``.

The always-run part uses a tiny random BERT in bge-small's layout that the
tests generate (CLS pooling), checked against the numpy oracle of
``tests/unit/providers/local_embeddings/bert.py``; the all-MiniLM-L6-v2 part
needs the packaged weights (marked ``integration``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import openai
import orjson
import pytest

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing.gateway import LoopThread, config_from

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"
if TYPE_CHECKING:
    import numpy as np
else:
    np = pytest.importorskip("numpy", reason=EXTRA)
pytest.importorskip("onnxruntime", reason=EXTRA)


pytestmark = pytest.mark.timeout(180)  # hang guards: a loaded 2-core machine runs the model ~10x slower
HELPER = Path(__file__).resolve().parent.parent / "unit" / "providers" / "local_embeddings" / "bert.py"
TINY = "bge-tiny"
SENTENCES = ["the cat sat on the mat.", "hello world", "a fast gateway runs"]


def load_bert() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_labgate_test_bert", HELPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_helper()


@pytest.fixture(scope="module")
def bert() -> ModuleType:
    return load_bert()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, bert: ModuleType) -> Path:
    return bert.write_tiny_bert(tmp_path_factory.mktemp("weights") / TINY, prefix="bert.")


class Live:
    def __init__(self, running: RunningGateway, thread: LoopThread) -> None:
        self.running, self.thread = running, thread

    @property
    def url(self) -> str:
        return self.running.url

    def adapter(self, provider: str) -> Any:
        return self.running.gateway.runtime.adapters[provider]


@pytest.fixture(scope="module")
def live(tiny_dir: Path) -> Iterator[Live]:
    from labgate.testing import Simulator

    with Simulator(models=["chat-model"]).run_in_thread() as sim:
        providers = {
            "local": {"type": "local_embeddings", "models": [TINY], "weights": {TINY: {"weights_dir": str(tiny_dir)}},
                      "max_inputs": 4, "max_queued": 6},
            "chat": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["chat-model"]},
        }
        thread = LoopThread()
        running = thread.run(start_gateway(config_from(providers, gateway={"store": {"capture": "none"}}),
                                           host="127.0.0.1", port=0))
        try:
            yield Live(running, thread)
        finally:
            thread.run(running.stop(grace=2.0))
            thread.close()


@pytest.fixture(scope="module")
def client(live: Live) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120) as sdk:
        yield sdk


def expected(bert: ModuleType, tiny_dir: Path, texts: list[str]) -> np.ndarray:
    oracle = bert.Oracle(tiny_dir, pooling="cls", normalize=True, max_tokens=64)
    return np.stack([oracle.embed(t) for t in texts])


def test_sdk_default_base64_and_float_both_give_the_oracles_vectors(client: openai.OpenAI, bert: ModuleType,
                                                                    tiny_dir: Path) -> None:
    default = client.embeddings.create(model=TINY, input=SENTENCES)  # the SDK asks for base64 and decodes it
    floats = client.embeddings.create(model=TINY, input=SENTENCES, encoding_format="float")
    want = expected(bert, tiny_dir, SENTENCES)
    for reply in (default, floats):
        got = np.array([d.embedding for d in reply.data])
        assert np.abs(got - want).max() <= 1e-5
        assert [(d.index, d.object) for d in reply.data] == [(0, "embedding"), (1, "embedding"), (2, "embedding")]
        assert (reply.model, reply.object) == (TINY, "list")
    tokens = sum(len(bert.Oracle(tiny_dir, pooling="cls", normalize=True, max_tokens=64).ids(s)) for s in SENTENCES)
    assert floats.usage.to_dict() == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_async_sdk(live: Live, bert: ModuleType, tiny_dir: Path) -> None:
    async def run() -> list[list[float]]:
        async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0) as sdk:
            replies = await asyncio.gather(*(sdk.embeddings.create(model=TINY, input=s) for s in SENTENCES))
        return [r.data[0].embedding for r in replies]

    assert np.abs(np.array(asyncio.run(run())) - expected(bert, tiny_dir, SENTENCES)).max() <= 1e-5


@pytest.mark.parametrize(("given", "message", "param"), [
    ([], "'input' is required: a string or a non-empty array.", "input"),  # the surface's check
    ("", "'input' must not be an empty string.", "input"),
    (["ok", 3], "'input[1]' must be a string like the other items; got int.", "input[1]"),
    (["ok", None], "'input[1]' must be a string like the other items; got NoneType.", "input[1]"),
    ("the cat " * 40, "'input[0]' is 82 tokens long; bge-tiny takes at most 64 (shorten it, or set "
     "`truncate: true` on the provider).", "input[0]"),
    (["a", "b", "c", "d", "e"], "'input' has 5 items; at most 4 per request.", "input"),
    ([[5, 99999]], "'input[0]' holds token id 99999, outside bge-tiny's vocabulary (0..29); token arrays are "
     "ids of the model's own tokenizer.", "input[0]"),
])
def test_bad_inputs_are_400_envelopes(client: openai.OpenAI, given: Any, message: str, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=TINY, input=given, encoding_format="float")
    response = caught.value.response
    body = response.json()
    assert (response.status_code, body["error"]["message"], body["error"]["param"], body["error"]["type"]) == (
        400, message, param, "invalid_request_error")
    assert response.headers["x-should-retry"] == "false"
    assert body["request_id"] == response.headers["x-request-id"]


def test_dimensions_on_a_model_that_cannot_shorten_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"cannot shorten its embeddings"):
        client.embeddings.create(model=TINY, input="dog", dimensions=8)


def test_an_unknown_model_is_a_404_with_a_suggestion(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="bge-tinny", input="dog")
    assert caught.value.response.json()["error"]["message"] == (
        "The model 'bge-tinny' does not exist or is not routed by this gateway. Did you mean 'bge-tiny'?")


def hold_engine(live: Live) -> tuple[threading.Event, threading.Event]:
    """Make the next forward passes wait for ``release``; ``entered`` is set when one is waiting."""
    batcher = live.adapter("local")._models[TINY].batcher
    assert batcher is not None
    run = batcher._run
    entered, release = threading.Event(), threading.Event()

    def held(batch: list[list[int]]) -> Any:
        entered.set()
        release.wait(10)
        return run(batch)

    batcher._run = held
    return entered, release


def post(live: Live, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(live.url + path, data=orjson.dumps(body),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, dict(resp.headers), orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), orjson.loads(exc.read())


def test_a_full_queue_is_a_429_with_retry_after_and_chat_is_not_blocked(client: openai.OpenAI, live: Live) -> None:
    client.embeddings.create(model=TINY, input="dog")  # loaded, batcher built
    entered, release = hold_engine(live)
    batcher = live.adapter("local")._models[TINY].batcher
    results: list[Any] = []
    try:
        workers = [threading.Thread(target=lambda n=n: results.append(
            post(live, "/v1/embeddings", {"model": TINY, "input": ["dog"] * n}))) for n in (1, 4)]
        workers[0].start()
        assert entered.wait(10)  # the first request's pass holds the only worker
        workers[1].start()
        deadline = time.monotonic() + 10
        while batcher.queued < 4:  # the second request waits in the queue
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, headers, body = post(live, "/v1/embeddings", {"model": TINY, "input": ["dog", "cat", "mat"]})
        assert (status, headers["retry-after"], body["error"]["type"]) == (429, "1", "rate_limit_error")
        assert "the local embeddings queue is full (4 inputs waiting, at most 6)" in body["error"]["message"]
        # chat on the same event loop is answered while the embedding pass is still held
        chat = client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content and not release.is_set() and results == []
    finally:
        release.set()
        for worker in workers:
            worker.join(10)
    assert sorted(r[0] for r in results) == [200, 200]


@pytest.fixture(scope="module")
def minilm_live() -> Iterator[Live]:
    from labgate.providers.local_embeddings.weights import builtin_installed

    if not builtin_installed():
        pytest.skip("all-MiniLM-L6-v2 weights not installed: labgate embeddings install-weights")
    providers = {"embeddings": {"type": "local_embeddings",
                                "models": [{"name": "all-MiniLM-L6-v2", "alias": "text-embedding-mini"}]}}
    thread = LoopThread()
    running = thread.run(start_gateway(config_from(providers, gateway={"store": {"capture": "none"}}),
                                       host="127.0.0.1", port=0))
    try:
        yield Live(running, thread)
    finally:
        thread.run(running.stop(grace=2.0))
        thread.close()


@pytest.mark.integration
def test_the_seeds_sdk_example_on_minilm(minilm_live: Live) -> None:
    client = openai.OpenAI(base_url=minilm_live.url + "/v1", api_key="anything", max_retries=0)
    response = client.embeddings.create(model="text-embedding-mini",
                                        input=["The quick brown fox", "A fast auburn fox", "Quarterly tax filing"])
    vectors = np.array([d.embedding for d in response.data])
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    single = client.embeddings.create(model="all-MiniLM-L6-v2", input="The quick brown fox")
    assert np.abs(np.array(single.data[0].embedding) - vectors[0]).max() <= 1e-6
    assert response.usage.prompt_tokens == sum(len(s.split()) + 2 for s in ("The quick brown fox",
                                                                              "A fast auburn fox",
                                                                              "Quarterly tax filing"))
