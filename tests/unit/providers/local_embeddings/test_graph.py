"""The ONNX graph built from safetensors agrees with the independent numpy oracle; the cache works."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from labgate.providers.local_embeddings import graph
from labgate.providers.local_embeddings.engine import EngineKey, engine_for
from labgate.providers.local_embeddings.weights import read_spec

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"
if TYPE_CHECKING:
    import numpy as np
else:
    np = pytest.importorskip("numpy", reason=EXTRA)
pytest.importorskip("onnxruntime", reason=EXTRA)

SENTENCES = ["the cat sat on the mat.", "hello world", "a fast gateway runs, and slow dogs embed", "zebra",
             "the red model is the blue model of the world and the dog sat on a mat ."]


@pytest.mark.parametrize(("pooling", "normalize", "prefix"), [
    ("cls", True, "bert."),  # bge-small: CLS pooling, normalized, "bert." tensor names
    ("mean", True, ""),  # all-MiniLM: mean pooling
    ("mean", False, ""),
    ("cls", False, "bert."),
])
def test_graph_matches_the_numpy_oracle(tmp_path: Path, bert: ModuleType, pooling: str, normalize: bool,
                                        prefix: str) -> None:
    directory = bert.write_tiny_bert(tmp_path / "w", seed=3, pooling=pooling, prefix=prefix)
    spec = read_spec("tiny", directory, normalize=normalize)
    engine = engine_for(EngineKey(spec, 1, tmp_path / "cache"))
    oracle = bert.Oracle(directory, pooling=pooling, normalize=normalize, max_tokens=64)
    ids = engine.encode(SENTENCES)
    assert ids == [oracle.ids(s) for s in SENTENCES]  # the same tokenizer file, read by both
    batched = engine.run(ids)
    expected = np.stack([oracle.forward(i) for i in ids])
    assert batched.shape == (len(SENTENCES), 32)
    assert np.abs(batched - expected).max() <= 1e-5
    singles = np.stack([engine.run([i])[0] for i in ids])
    assert np.abs(singles - batched).max() <= 1e-6  # padding in a batch changes nothing


def test_graph_is_cached_and_keyed_by_the_weights(tmp_path: Path, bert: ModuleType) -> None:
    cache = tmp_path / "cache"
    first = read_spec("tiny", bert.write_tiny_bert(tmp_path / "a", seed=1))
    path, built = graph.cached_graph(first, cache)
    assert (built, graph.cached_graph(first, cache)) == (True, (path, False))
    other = read_spec("tiny", bert.write_tiny_bert(tmp_path / "b", seed=2))  # same shapes, other weights
    other_path, built = graph.cached_graph(other, cache)
    assert built and other_path != path
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, other_path.name])  # no temp files left


def test_a_new_builder_version_builds_again(tmp_path: Path, bert: ModuleType,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = read_spec("tiny", bert.write_tiny_bert(tmp_path / "a", seed=1))
    path, _ = graph.cached_graph(spec, tmp_path / "cache")
    monkeypatch.setattr(graph, "BUILDER_VERSION", "test-next")
    newer, built = graph.cached_graph(spec, tmp_path / "cache")
    assert built and newer != path


def test_pooling_setting_changes_the_cache_key(tmp_path: Path, bert: ModuleType) -> None:
    directory = bert.write_tiny_bert(tmp_path / "a", seed=1)
    assert graph.cache_key(read_spec("t", directory, pooling="cls")) != graph.cache_key(
        read_spec("t", directory, pooling="mean"))


@pytest.mark.integration
def test_minilm_matches_the_oracle(tmp_path: Path, bert: ModuleType, minilm_dir: Path) -> None:
    spec = read_spec("all-MiniLM-L6-v2", minilm_dir)
    assert (spec.hidden_size, spec.pooling, spec.normalize, spec.max_tokens) == (384, "mean", True, 256)
    engine = engine_for(EngineKey(spec, 1, tmp_path / "cache"))
    oracle = bert.Oracle(minilm_dir, pooling="mean", normalize=True, max_tokens=256)
    fixed = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.",
             "A cheetah is running behind its prey.", "labgate serves embeddings without torch."]
    ids = engine.encode(fixed)
    got = engine.run(ids)
    assert np.abs(got - np.stack([oracle.forward(i) for i in ids])).max() <= 1e-5
