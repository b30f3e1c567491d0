"""A loaded model: its tokenizer and its onnxruntime session, shared by every Runtime of the process.

Loading is the slow part (hashing the weights, maybe building the ONNX graph,
creating the session), so a process loads each model once: engines live in a
weak-valued table keyed by everything that shapes them, which lets the
Runtime built by a config reload reuse the one the old Runtime holds, and
frees it once no Runtime does. Foreign exceptions (onnxruntime, tokenizers)
are translated here, at this folder's one boundary.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labgate.errors import LabgateError, UpstreamStatusError
from labgate.providers.local_embeddings.graph import cached_graph
from labgate.providers.local_embeddings.weights import ModelSpec

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("labgate.embeddings")


@dataclass(frozen=True, slots=True)
class EngineKey:
    spec: ModelSpec
    intra_op_threads: int
    cache_dir: Path


class Engine:
    """Runs batches of token ids through one model; thread-safe (onnxruntime sessions are)."""

    def __init__(self, key: EngineKey) -> None:
        import numpy as np
        import onnxruntime as ort  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        started = time.perf_counter()
        spec = key.spec
        self.spec = spec
        self._np = np
        try:
            self.tokenizer = Tokenizer.from_file(str(spec.tokenizer))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise UpstreamStatusError(f"model {spec.name!r}: cannot read {spec.tokenizer}: {exc}",
                                      upstream_status=500) from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        path, built = cached_graph(spec, key.cache_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = key.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads must not spin: the event loop (chat traffic) shares these cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.pad_id = _pad_id(self.tokenizer)
        self.load_seconds = time.perf_counter() - started
        log.info("embeddings: loaded %s in %.2f s (%s graph %s)", spec.name, self.load_seconds,
                 "built" if built else "cached", path)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, with the model's special tokens, neither padded nor cut."""
        if len(texts) == 1:
            return [self.tokenizer.encode(texts[0]).ids]
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def run(self, batch: list[list[int]]) -> np.ndarray:
        """One forward pass: [len(batch), hidden] float32 (padded to the longest sequence)."""
        np = self._np
        width = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = ids
            mask[row, :len(ids)] = 1
        try:
            (out,) = self.session.run(["embedding"], {"input_ids": input_ids, "attention_mask": mask})
        except Exception as exc:  # onnxruntime's errors share no base class but Exception
            raise UpstreamStatusError(f"embedding model {self.spec.name!r} failed: {exc}",
                                      upstream_status=500) from None
        return out


def _pad_id(tokenizer: Any) -> int:
    padding = tokenizer.token_to_id("[PAD]")
    return int(padding) if padding is not None else 0


_ENGINES: weakref.WeakValueDictionary[EngineKey, Engine] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()  # one load at a time: two Runtimes asking together load once


def engine_for(key: EngineKey) -> Engine:
    """The process's engine for ``key``, loaded now if no live Runtime holds it (blocking: call off the loop)."""
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            try:
                engine = Engine(key)
            except LabgateError:
                raise
            except Exception as exc:  # a missing tensor, an unwritable cache, a session that will not build
                log.exception("embeddings: cannot load %s", key.spec.name)
                raise UpstreamStatusError(f"cannot load embedding model {key.spec.name!r}: {exc}",
                                          upstream_status=500) from None
            _ENGINES[key] = engine
        return engine
