"""Test helpers: an independent numpy BERT (the oracle) and a tiny random BERT in bge layout.

The oracle shares no code with labgate's ONNX builder: it reads the
safetensors and the tokenizer itself and runs the forward pass the way
Hugging Face's ``BertModel`` and sentence-transformers' Pooling/Normalize do,
in float64. Loaded by path (``load_helper``) from the unit and contract tests.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def load_helper() -> ModuleType:
    """This module, importable from any test directory (the suite runs with --import-mode=importlib)."""
    name = "_labgate_test_bert"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "bert.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Oracle:
    """Sentence embeddings by a plain numpy forward pass, one sentence at a time (no padding)."""

    def __init__(self, directory: Path, *, pooling: str, normalize: bool, max_tokens: int) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.config = json.loads((directory / "config.json").read_text())
        raw = load_file(str(directory / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items() if v.dtype.kind == "f"}
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.pooling, self.normalize, self.max_tokens = pooling, normalize, max_tokens

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def embed(self, text: str) -> np.ndarray:
        return self.forward(self.ids(text))

    def forward(self, ids: list[int]) -> np.ndarray:
        w, c = self.w, self.config
        eps = float(c.get("layer_norm_eps", 1e-12))
        heads = int(c["num_attention_heads"])
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][: len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w, "embeddings.LayerNorm", eps)
        for i in range(int(c["num_hidden_layers"])):
            p = f"encoder.layer.{i}"
            q, k, v = (_linear(x, w, f"{p}.attention.self.{n}") for n in ("query", "key", "value"))
            n, d = x.shape[0], x.shape[1] // heads
            q, k, v = (a.reshape(n, heads, d).transpose(1, 0, 2) for a in (q, k, v))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(1, 0, 2).reshape(n, heads * d)
            x = _layer_norm(_linear(context, w, f"{p}.attention.output.dense") + x, w,
                            f"{p}.attention.output.LayerNorm", eps)
            h = _linear(x, w, f"{p}.intermediate.dense")
            h = 0.5 * h * (1.0 + np.vectorize(math.erf)(h / math.sqrt(2.0)))
            x = _layer_norm(_linear(h, w, f"{p}.output.dense") + x, w, f"{p}.output.LayerNorm", eps)
        pooled = x[0] if self.pooling == "cls" else x.mean(axis=0)
        if self.normalize:
            pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return pooled


def _linear(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _layer_norm(x: np.ndarray, w: dict[str, np.ndarray], name: str, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat", "gateway",
         "blue", "red", "fast", "slow", "runs", "model", "embed", "##s", "##ing", "hello", "world", ".", ",",
         "is", "and", "of", "to"]


def write_tiny_bert(directory: Path, *, seed: int = 0, hidden: int = 32, heads: int = 4, layers: int = 2,
                    intermediate: int = 64, max_positions: int = 64, pooling: str | None = "cls",
                    prefix: str = "", max_seq_length: int | None = None) -> Path:
    """A random BERT in bge-small's layout: model.safetensors, tokenizer.json, config.json (+ 1_Pooling)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = len(WORDS)

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": rand(vocab, hidden),
        "embeddings.position_embeddings.weight": rand(max_positions, hidden),
        "embeddings.token_type_embeddings.weight": rand(2, hidden),
        "embeddings.LayerNorm.weight": 1 + rand(hidden, scale=0.05), "embeddings.LayerNorm.bias": rand(hidden),
        "embeddings.position_ids": np.arange(max_positions, dtype=np.int64)[None, :],
    }
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[f"{p}.{name}.weight"], t[f"{p}.{name}.bias"] = rand(hidden, hidden), rand(hidden)
        t[f"{p}.intermediate.dense.weight"], t[f"{p}.intermediate.dense.bias"] = (
            rand(intermediate, hidden), rand(intermediate))
        t[f"{p}.output.dense.weight"], t[f"{p}.output.dense.bias"] = rand(hidden, intermediate), rand(hidden)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[f"{p}.{name}.weight"], t[f"{p}.{name}.bias"] = 1 + rand(hidden, scale=0.05), rand(hidden)
    save_file({prefix + k: v for k, v in t.items()}, str(directory / "model.safetensors"))
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu", "hidden_size": hidden,
              "num_attention_heads": heads, "num_hidden_layers": layers, "intermediate_size": intermediate,
              "max_position_embeddings": max_positions, "vocab_size": vocab, "type_vocab_size": 2,
              "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute"}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "tokenizer.json").write_text(json.dumps(_tokenizer_json()))
    if pooling is not None:
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean"}))
        (directory / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    if max_seq_length is not None:
        (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return directory


def _tokenizer_json() -> dict[str, Any]:
    """A BERT WordPiece tokenizer (lower-casing, [CLS] … [SEP]) over :data:`WORDS`."""
    special = [{"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for i, w in enumerate(WORDS[:5])]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 1}},
                                    {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                           "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                                              "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {w: i for i, w in enumerate(WORDS)}},
    }
