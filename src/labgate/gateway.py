"""The request lifecycle in one screen: auth → parse → resolve → attempts → record.

Read this first. The server hands each API request here; everything below
(routing, providers, telemetry) is called from these few lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labgate.errors import InternalError, LabgateError
from labgate.keys import check_model
from labgate.providers.base import Endpoint, IteratorStream, Reply, Stream, Translated
from labgate.record import CLIENT_CLOSED, RequestRecord
from labgate.routing.attempts import attempt
from labgate.routing.balancer import local_first_decision, plan
from labgate.routing.rescue import trailer
from labgate.routing.table import Deployment
from labgate.runtime import Runtime

if TYPE_CHECKING:
    from labgate.analysis.adaptive import Allocator
    from labgate.server.replicas import Replicas
    from labgate.store.writer import History
    from labgate.telemetry.metrics import Metrics
    from labgate.telemetry.traces import Tracer

# An OpenAI-dialect payload, or (from another dialect's surface) a Translated one.
Parser = Callable[[bytes], dict[str, Any] | Translated]
# A whole reply in the client's dialect (another dialect's surface translates it back).
Answer = Callable[[Reply, RequestRecord], Reply]


class Gateway:
    """Holds the current :class:`Runtime`; a reload swaps ``self.runtime``.

    ``history`` (process lifetime, not per Runtime: a reload keeps its queue)
    receives every finished record; ``None`` means history is off. ``metrics``
    (process lifetime too) counts every finished record; ``None`` means metrics are off.
    ``traces`` (process lifetime) gives sampled requests a trace and exports their spans,
    built from the finished record off the request path; ``None`` means tracing is off.
    """

    def __init__(self, runtime: Runtime, *, history: History | None = None,
                 metrics: Metrics | None = None, traces: Tracer | None = None) -> None:
        self.runtime = runtime
        self.history = history
        self.metrics = metrics
        self.traces = traces
        self._keep_content = history is not None and history.keeps_content
        self.draining = False  # shutdown began: readiness fails so load balancers stop sending
        self.replicas: Replicas | None = None  # the other replicas on state.url (server/replicas.py); None: alone
        self.allocator: Allocator | None = None  # adaptive experiments' re-weighting task (analysis/adaptive.py)

    async def handle(self, record: RequestRecord, *, api_key: str | None, body: bytes,
                     parse: Parser, answer: Answer | None = None) -> Reply | Stream:
        """Serve one API call: a whole reply, or the stream of bytes to relay (each in its ``dialect``).

        ``answer`` turns a whole reply into what the client gets before the record closes, so that
        a reply that cannot be translated is recorded with the error status the client sees.
        """
        rt = self.runtime  # taken once: a reload never changes it under this request
        if self.traces is not None:
            self.traces.begin(record)  # ids and the traceparent the attempts send upstream
        try:
            record.key_id, key = rt.auth.admit(api_key)  # the master key, a virtual key (keys.py), or no auth
            endpoint: Endpoint = record.endpoint  # type: ignore[assignment]  # the surfaces set only endpoints
            # bytes answered from the cache before are not parsed again: their parse is shared (state/cache.py)
            known = rt.cache.known(record, body) if rt.cache is not None and rt.experiments is None else None
            parsed, native = parse(body) if known is None else known.parsed, None
            if isinstance(parsed, Translated):  # the client spoke another dialect
                payload, endpoint, native = parsed.body, parsed.endpoint, parsed.native
            else:
                payload = parsed
            record.model, record.stream = payload["model"], payload.get("stream") is True
            record.payload, record.body = payload, body  # references for history; read off the hot path
            if key is not None:
                record.api_key = key
                if key.pattern is not None:  # the key's allowed models (globs; None: every model)
                    check_model(key, record.model)
            if rt.experiments is not None:  # A/B experiments: the variant's model and overrides
                payload, native = rt.experiments.assign(record, payload, native, key)
            route = rt.table.resolve(record.model)
            if rt.cache and (hit := await rt.cache.get(route, record, native or payload, known=known,
                                                       parsed=None if rt.experiments is not None else parsed)):
                return self.done(rt, record, hit, answer)
            limiter = rt.limiter  # rpm/tpm and budgets (state/limits.py): a key without limits draws on none
            if limiter is not None and (limiter.static or (key is not None and limiter.plan(record))):
                route = limiter.reserve_now(record, route, rt.table) if limiter.in_process else \
                    await limiter.reserve(record, route, rt.table)  # in-process counters: no coroutine
            candidates = plan(route, rt.circuit, max_attempts=rt.plan_size)
            if route.local_first:
                record.routing = local_first_decision(route, candidates)  # what x-labgate-routing says
            result, dep = await attempt(
                candidates, endpoint=endpoint, body=payload, native=native, stream=record.stream,
                deadline=time.monotonic() + rt.request_timeout, circuit=rt.circuit, record=record,
                queue=rt.queue, limits=limiter,  # busy or over its provider's limit: skipped (docs/routing.md)
                max_attempts=rt.max_attempts,
                pace=rt.pace)  # stream deadlines: first token, idle (routing/pace.py)
            if isinstance(result, Reply):
                record.usage, record.finish_reason = result.usage, result.finish_reason
                if answer is not None:
                    result = answer(result, record)
            if record.cache_ticket is not None:  # a cache miss: stored at finish if it completes
                record.cache_ticket.result = result
        except BaseException as exc:
            self.finish(rt, record, exc)
            raise
        if isinstance(result, Reply):
            if self._keep_content:
                record.reply = result.body
            self.finish(rt, record)
            return result
        return IteratorStream(Relay(self, rt, result, dep, record), result.info, result.dialect)

    def done(self, rt: Runtime, record: RequestRecord, hit: Reply | Stream, answer: Answer | None) -> Reply | Stream:
        """Answer from the cache: the record closes now (a replayed stream is already in memory)."""
        if answer is not None and isinstance(hit, Reply):
            hit = answer(hit, record)
        self.finish(rt, record)
        return hit

    def finish(self, rt: Runtime, record: RequestRecord, error: BaseException | None = None, *,
               streaming: bool = False) -> None:
        """Close the record with its outcome and hand it to telemetry and history."""
        record.finished = time.perf_counter()
        if record.first_byte is None and error is None:
            record.first_byte = record.finished
        if error is not None:
            if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
                record.status, record.outcome = CLIENT_CLOSED, "client_disconnected"
            else:
                exc = error if isinstance(error, LabgateError) else InternalError("internal error")
                record.outcome = "stream_error" if streaming else "error"
                if not streaming:
                    record.status = exc.status_in(record.dialect)  # what the client's envelope says
                record.error_type, record.error_message = exc.code, exc.message
        if rt.prices is not None:
            record.cost = rt.prices.price(record)  # cost.py
        if record.reservation is not None:
            rt.limiter.settle(record)  # type: ignore[union-attr]  # real tokens and cost replace the estimates
        if rt.cache is not None and record.cache_ticket is not None:
            rt.cache.store(record)  # a complete answer is kept; requests waiting for it are released
        rt.access_log.write(record)
        if self.history is not None:
            self.history.put(record)
        if self.metrics is not None:
            self.metrics.observe(record)
        if self.traces is not None and record.trace is not None:  # unsampled: nothing to queue
            self.traces.put(record)


class Relay:
    """Forwards a stream chunk by chunk; the record is written when it ends, however it ends.

    A class rather than an async generator: a generator that was never started skips its
    ``finally`` on aclose(), and a client can go away before the first chunk is pulled.
    """

    __slots__ = ("_chunks", "_dep", "_done", "_gateway", "_it", "_record", "_rescued_from", "_rt", "_sent",
                 "_stream")

    def __init__(self, gateway: Gateway, rt: Runtime, stream: Stream, dep: Deployment,
                 record: RequestRecord) -> None:
        self._gateway, self._rt, self._stream, self._dep, self._record = gateway, rt, stream, dep, record
        self._it = stream.__aiter__()
        ticket = record.cache_ticket  # a cache miss keeps the chunks (bounded) to store the answer
        self._chunks = record.chunks = [] if gateway._keep_content else ticket.capture() if ticket else None
        # what the client has received, for stream rescue (None: rescue is off); history's list when it keeps one
        self._sent = None if rt.rescue is None else self._chunks if gateway._keep_content else []
        self._rescued_from: str | None = None
        self._done = False

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            if self._rescued_from is not None:  # a rescued stream ends with a comment saying so
                chunk, self._rescued_from = trailer(self._record, self._rescued_from), None
                return chunk
            await self._end(None)
            raise
        except BaseException as exc:
            if self._sent is not None and await self._rescue(exc):
                return await self.__anext__()
            await self._end(exc)
            raise
        record = self._record
        if record.first_byte is None:
            record.first_byte = time.perf_counter()
        if self._chunks is not None:
            self._chunks.append(chunk)
        if self._sent is not None and self._sent is not self._chunks:
            self._sent.append(chunk)
        return chunk

    async def _rescue(self, error: BaseException) -> bool:
        """Stream rescue (routing/rescue.py): continue from the partial answer on another deployment."""
        rescue, failed = self._rt.rescue, self._dep
        if rescue is None or self._sent is None:
            return False
        try:  # on success the broken stream is closed and its lease released
            found = await rescue.resume(self._rt, self._record, self._stream, failed, error, self._sent)
        except BaseException as late:  # the client left while we looked for a continuation
            await self._end(late)
            raise
        if found is None:
            return False
        (self._stream, self._dep), self._rescued_from = found, failed.key
        self._it = self._stream.__aiter__()
        return True

    async def aclose(self) -> None:
        await self._end(GeneratorExit())

    async def _end(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        record, info = self._record, self._stream.info
        try:
            await self._stream.aclose()
        finally:
            self._dep.release()  # the stream's lease ends here, once its connection is back in the pool
            record.usage, record.finish_reason = info.usage, info.finish_reason
            record.first_token = record.first_token or info.first_token
            self._gateway.finish(self._rt, record, error, streaming=True)
