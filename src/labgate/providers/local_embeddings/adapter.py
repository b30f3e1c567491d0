"""The ``local_embeddings`` adapter: OpenAI ``/v1/embeddings`` answered in-process.

    send(call) ─ check input (400s) ─ tokenize (inline when small, else on the pool)
              ─ length check (400, or cut with ``truncate``) ─ batcher ─ pool thread: onnxruntime
              ─ ``dimensions`` cut (Matryoshka models only) ─ reply JSON (float or base64)

Nothing here runs a model on the event loop: passes, model loads and large
tokenizations run on the adapter's bounded thread pool, so chat traffic on
the same loop is never held up for longer than a small request's tokenization.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from labgate.errors import ModelNotFoundError, RequestError, UnsupportedEndpointError, UpstreamTimeoutError
from labgate.providers.base import Call, Reply, Stream, Usage
from labgate.providers.local_embeddings.batcher import Batcher
from labgate.providers.local_embeddings.config import LocalEmbeddingsConfig
from labgate.providers.local_embeddings.engine import Engine, EngineKey, engine_for
from labgate.providers.local_embeddings.weights import ModelSpec, WeightsError
from labgate.providers.local_embeddings.wire import Inputs, parse_inputs, reply_body
from labgate.store import default_data_dir

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("labgate.embeddings")
INLINE_TOKENIZE_CHARS = 4096  # a request with more text is tokenized on the pool, not the event loop


def engine_key(config: LocalEmbeddingsConfig, name: str) -> EngineKey:
    """What identifies the engine of one configured model (:class:`WeightsError` if its files are unusable)."""
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_data_dir() / "embeddings"
    return EngineKey(config.spec(name), config.intra_op_threads, cache_dir)


@dataclass(eq=False, slots=True)
class _Model:
    key: EngineKey
    engine: Engine | None = None
    batcher: Batcher | None = None
    loading: asyncio.Future[Engine] | None = None


class LocalEmbeddingsAdapter:
    """Serves the configured embedding models; raises only :mod:`labgate.errors` exceptions."""

    endpoints = frozenset({"embeddings"})

    def __init__(self, config: LocalEmbeddingsConfig, *, name: str) -> None:
        self.name, self.config = name, config
        try:
            self._models = {m.name: _Model(engine_key(config, m.name)) for m in config.models}
        except WeightsError as exc:
            raise ValueError(f"provider {name!r}: {exc}") from None
        self._pool = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix=f"labgate-embed-{name}",
                                        initializer=_lower_priority, initargs=(config.nice,))
        if config.load == "start":
            self._load_all()

    def _load_all(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop (a script, a test): load now, still on a worker thread
            for model in self._models.values():
                self._ready(model, self._pool.submit(engine_for, model.key).result())
            return
        for model in self._models.values():
            self._loading(model).add_done_callback(_log_failure)

    def _loading(self, model: _Model) -> asyncio.Future[Engine]:
        if model.loading is None:
            model.loading = _load_detached(model.key, self.config.nice)
        return model.loading

    def _ready(self, model: _Model, engine: Engine) -> Engine:
        if model.engine is None:
            model.engine = engine
            config = self.config
            model.batcher = Batcher(engine.run, executor=self._pool, workers=config.threads,
                                    max_batch=config.max_batch, max_wait=config.max_wait_ms / 1000,
                                    max_queued=config.max_queued)
        return model.engine

    async def _engine(self, model: _Model) -> Engine:
        if model.engine is not None:
            return model.engine
        loading = self._loading(model)
        try:
            engine = await asyncio.shield(loading)  # one waiter going away must not cancel the load
        except Exception:
            if model.loading is loading:
                model.loading = None  # the next request tries again (the files may have been fixed)
            raise
        return self._ready(model, engine)

    async def send(self, call: Call) -> Reply:
        model = self._models.get(call.model)
        if model is None:
            raise ModelNotFoundError(call.model, sorted(self._models))
        body = call.body
        inputs = parse_inputs(body.get("input"), max_inputs=self.config.max_inputs)
        spec = model.key.spec
        dimensions = _dimensions(body.get("dimensions"), spec)
        encoding = body.get("encoding_format") or "float"
        try:
            async with asyncio.timeout(call.timeout):
                engine = await self._engine(model)
                seqs = await self._tokenize(engine, inputs)
                assert model.batcher is not None
                rows = await model.batcher.embed(seqs)
        except TimeoutError:
            raise UpstreamTimeoutError(f"embedding with {spec.name!r} took longer than {call.timeout:.3g} s") from None
        if dimensions is not None:
            rows = _shorten(rows, dimensions, normalize=spec.normalize)
        tokens = sum(len(s) for s in seqs)
        return Reply(reply_body(rows, model=call.model, prompt_tokens=tokens, encoding=encoding),
                     usage=Usage(prompt_tokens=tokens))

    async def stream(self, call: Call) -> Stream:
        raise UnsupportedEndpointError("Embeddings cannot be streamed.", param="stream")

    async def _tokenize(self, engine: Engine, inputs: Inputs) -> list[list[int]]:
        size = sum(map(len, inputs.texts)) if inputs.texts is not None else sum(map(len, inputs.tokens or ()))
        if size <= INLINE_TOKENIZE_CHARS:
            return self._token_ids(engine, inputs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._token_ids, engine, inputs)

    def _token_ids(self, engine: Engine, inputs: Inputs) -> list[list[int]]:
        """Each input's ids with the model's special tokens, checked against the length limit."""
        spec = engine.spec
        texts = inputs.texts
        if texts is None:
            texts = [self._decode(engine, i, ids) for i, ids in enumerate(inputs.tokens or ())]
        seqs = engine.encode(texts)
        limit = spec.max_tokens
        for i, ids in enumerate(seqs):
            if len(ids) > limit:
                if not self.config.truncate:
                    raise RequestError(
                        f"'input[{i}]' is {len(ids)} tokens long; {spec.name} takes at most {limit} "
                        "(shorten it, or set `truncate: true` on the provider).", param=f"input[{i}]",
                        code="input_too_long")
                seqs[i] = ids[:limit - 1] + ids[-1:]  # keep the closing special token ([SEP])
        return seqs

    def _decode(self, engine: Engine, index: int, ids: list[int]) -> str:
        if self.config.token_inputs == "refuse":
            raise RequestError(f"{engine.spec.name} does not take token arrays here; send text.",
                               param=f"input[{index}]")
        vocab = engine.spec.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestError(f"'input[{index}]' holds token id {bad}, outside {engine.spec.name}'s vocabulary "
                               f"(0..{vocab - 1}); token arrays are ids of the model's own tokenizer.",
                               param=f"input[{index}]")
        text = engine.decode(ids)
        if not text.strip():
            raise RequestError(f"'input[{index}]' decodes to empty text.", param=f"input[{index}]")
        return text

    async def list_models(self, *, timeout: float) -> list[str]:
        return list(self._models)

    async def aclose(self) -> None:
        for model in self._models.values():
            if model.batcher is not None:
                await model.batcher.aclose()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _dimensions(value: object, spec: ModelSpec) -> int | None:
    """``dimensions`` to cut to, None for the model's own; 400 where the model cannot be cut."""
    if value is None or value == spec.hidden_size:
        return None
    assert isinstance(value, int)  # the surface checked it is an integer ≥ 1
    if not spec.matryoshka:
        raise RequestError(f"{spec.name} cannot shorten its embeddings: 'dimensions' must be {spec.hidden_size} "
                           "or absent.", param="dimensions")
    if value > spec.hidden_size:
        raise RequestError(f"'dimensions' is at most {spec.hidden_size} for {spec.name}.", param="dimensions")
    return value


def _shorten(rows: np.ndarray, dimensions: int, *, normalize: bool) -> np.ndarray:
    """Matryoshka: the first ``dimensions`` values, L2-normalised again if the model normalises."""
    import numpy as np

    cut = rows[:, :dimensions]
    if not normalize:
        return np.ascontiguousarray(cut)
    norms = np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return (cut / norms).astype(np.float32)


def _lower_priority(nice: int) -> None:
    """Run this worker thread (and the onnxruntime threads it creates, which inherit it) ``nice`` lower."""
    if nice and hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        try:  # Linux: this thread only, relative to where it starts
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError as exc:  # not permitted here: run at the normal priority
            log.warning("embeddings: cannot lower the worker threads' priority: %s", exc)


def _load_detached(key: EngineKey, nice: int) -> asyncio.Future[Engine]:
    """``engine_for(key)`` on a daemon thread of its own, ``nice`` lower, settling a future of the running loop.

    Not on the pool: the interpreter joins pool threads at exit, so a gateway told to stop while a model
    loads (seconds idle, more than 30 s on a loaded machine) would not exit until the load was done.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Engine] = loop.create_future()

    def settle(engine: Engine | None, exc: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(engine)  # type: ignore[arg-type]

    def load() -> None:
        _lower_priority(nice)
        engine: Engine | None = None
        error: BaseException | None = None
        try:
            engine = engine_for(key)
        except BaseException as exc:  # handed to the waiters, like run_in_executor would
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits for it
            loop.call_soon_threadsafe(settle, engine, error)

    threading.Thread(target=load, name=f"labgate-embed-load-{key.spec.name}", daemon=True).start()
    return future


def _log_failure(future: asyncio.Future[Engine]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("embeddings: loading at start failed: %s", future.exception())

