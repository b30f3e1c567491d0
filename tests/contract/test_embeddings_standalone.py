"""``labgate embeddings serve`` as a real process (the seeds' service on port 8002), used directly
with the official SDK and routed from another gateway as an ``openai_compatible`` provider."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import openai
import pytest

from labgate.server.serve import start_gateway
from labgate.testing.gateway import LoopThread, config_from
from labgate.testing.process import labgate, stop

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"
if TYPE_CHECKING:
    import numpy as np
else:
    np = pytest.importorskip("numpy", reason=EXTRA)
pytest.importorskip("onnxruntime", reason=EXTRA)


pytestmark = pytest.mark.timeout(90)
HELPER = Path(__file__).resolve().parent.parent / "unit" / "providers" / "local_embeddings" / "bert.py"
TINY = "bge-tiny"


def load_bert() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_labgate_test_bert", HELPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_helper()


@contextmanager
def standalone(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``labgate embeddings serve --port 0 ARGS``; its URL once it listens; SIGTERM at the end."""
    with labgate("embeddings", "serve", "--port", "0", *args, start_timeout_s=30) as gw:
        yield gw.proc, gw.url


def test_standalone_server_direct_and_behind_a_gateway(tmp_path: Path) -> None:
    bert = load_bert()
    weights = bert.write_tiny_bert(tmp_path / TINY, prefix="bert.")
    oracle = bert.Oracle(weights, pooling="cls", normalize=True, max_tokens=64)
    texts = ["the cat sat on the mat.", "hello world"]
    want = np.stack([oracle.embed(t) for t in texts])
    with standalone("--model", f"{TINY}={weights}") as (proc, url):
        direct = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).embeddings.create(
            model=TINY, input=texts)
        assert np.abs(np.array([d.embedding for d in direct.data]) - want).max() <= 1e-5
        # the seeds' setup: the main gateway routes an embeddings model to the service on 8002
        front = {"embeddings-service": {"type": "openai_compatible", "base_url": url + "/v1",
                                        "models": [{"name": TINY, "alias": "text-embedding-bge"}]}}
        thread = LoopThread()
        running = thread.run(start_gateway(config_from(front, gateway={"store": {"capture": "none"}}),
                                           host="127.0.0.1", port=0))
        try:
            sdk = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
            routed = sdk.embeddings.create(model="text-embedding-bge", input=texts, encoding_format="float")
            assert np.abs(np.array([d.embedding for d in routed.data]) - want).max() <= 1e-5
            with pytest.raises(openai.BadRequestError, match="must not be an empty string"):
                sdk.embeddings.create(model="text-embedding-bge", input="")  # the service's 400, passed on
        finally:
            thread.run(running.stop(grace=2.0))
            thread.close()
        assert stop((proc,)) == [0]  # SIGTERM; a hang past 30 s fails with the child's stacks


def test_standalone_refuses_a_model_without_weights() -> None:
    done = subprocess.run([sys.executable, "-m", "labgate", "embeddings", "serve", "--port", "0",
                           "--model", "bge-small-en-v1.5"], capture_output=True, timeout=60)
    assert done.returncode == 1
    assert "model 'bge-small-en-v1.5' has no weights" in done.stderr.decode()


@pytest.mark.integration
def test_standalone_serves_minilm_by_default() -> None:
    from labgate.providers.local_embeddings.weights import builtin_installed

    if not builtin_installed():
        pytest.skip("all-MiniLM-L6-v2 weights not installed: labgate embeddings install-weights")
    with standalone() as (_, url):
        reply = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).embeddings.create(
            model="all-MiniLM-L6-v2", input="Hello, world")
        assert len(reply.data[0].embedding) == 384
