"""The real all-MiniLM-L6-v2 (packaged weights) through the adapter: oracle, meaning, batching."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import orjson
import pytest

from labgate.config.load import build_config
from labgate.providers.base import Call
from labgate.providers.local_embeddings.adapter import LocalEmbeddingsAdapter

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"
if TYPE_CHECKING:
    import numpy as np
else:
    np = pytest.importorskip("numpy", reason=EXTRA)
pytest.importorskip("onnxruntime", reason=EXTRA)

pytestmark = pytest.mark.integration
MODEL = "all-MiniLM-L6-v2"
FIXED = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.",
         "A cheetah is running behind its prey.", "How do I reset my password?"]


async def vectors(adapter: LocalEmbeddingsAdapter, given: object) -> np.ndarray:
    reply = await adapter.send(Call("embeddings", {"model": MODEL, "input": given}, MODEL, 120.0, "req"))  # hang guard
    return np.array([d["embedding"] for d in orjson.loads(reply.body)["data"]], dtype=np.float64)


@pytest.mark.asyncio
async def test_minilm_agrees_with_the_oracle_means_what_it_says_and_batches_exactly(
        minilm_dir: Path, bert: ModuleType, tmp_path: Path) -> None:
    config = build_config({"providers": {"providers": {"local": {
        "type": "local_embeddings", "cache_dir": str(tmp_path)}}}}, {}, source="test").providers["local"]
    adapter = LocalEmbeddingsAdapter(config, name="local")  # type: ignore[arg-type]
    try:
        oracle = bert.Oracle(minilm_dir, pooling="mean", normalize=True, max_tokens=256)
        batched = await vectors(adapter, FIXED)
        assert batched.shape == (5, 384)
        assert np.abs(batched - np.stack([oracle.embed(s) for s in FIXED])).max() <= 1e-5
        singles = np.concatenate([await vectors(adapter, s) for s in FIXED])
        assert np.abs(singles - batched).max() <= 1e-6
        similarity = batched @ batched.T
        paraphrase = similarity[0, 1]  # eating food / eating bread
        unrelated = [similarity[0, 2], similarity[0, 3], similarity[0, 4], similarity[1, 2], similarity[2, 4]]
        assert paraphrase > 0.5 and paraphrase > max(unrelated) + 0.3
        assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-6)
    finally:
        await adapter.aclose()
