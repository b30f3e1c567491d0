"""OpenTelemetry traces: ids on the request path, spans built from the finished record off it.

Creating live SDK spans per request would cost more than the whole hot path does, so
the request path only does this (and nothing at all when ``tracing.enabled`` is false):

- :meth:`Tracer.begin` (start of ``Gateway.handle``): read the client's W3C
  ``traceparent`` (kept on the record by the server), pick ids, decide sampling;
- :meth:`Trace.start_attempt` / :meth:`Trace.end_attempt` (``routing/attempts.py``): a
  span id and two timestamps per upstream attempt, and the ``traceparent`` sent upstream;
- :meth:`Tracer.put` (``Gateway.finish``): append the record to a bounded queue.

A daemon thread wakes every ``export_interval_s`` and ships the queued records: with
``tracing.export: process`` (the default) as tuples to an export process
(:mod:`labgate.telemetry.export`); with ``thread`` it turns them into the SDK's span data
(``ReadableSpan``, see :mod:`labgate.telemetry.spans`) itself and hands them to the SDK's
OTLP/HTTP exporter, the way the history writer turns records into rows. A full
queue drops the newest records (counted, and logged at most once a minute).
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from labgate.config.schema.tracing import TracingConfig
from labgate.record import RequestRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from labgate.telemetry.export import ProcessExporter

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
MAX_TRACESTATE = 512  # characters of a client's tracestate forwarded upstream (W3C: 32 members)
_TRACESTATE = re.compile(r"[\x20-\x7e]*")
_WARN_EVERY_S = 60.0
_ids = random.Random()  # ids need to be unique, not secret: the fast generator, seeded from os.urandom

log = logging.getLogger("labgate.traces")


def missing_sdk() -> str | None:
    """Why ``tracing.enabled`` cannot work here (the SDK is not installed), or None."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: F401
        from opentelemetry.sdk.trace import ReadableSpan  # noqa: F401
    except ImportError as exc:
        return (f"tracing.enabled needs the OpenTelemetry SDK and its OTLP/HTTP exporter ({exc}): "
                "pip install 'labgate[otel]'")
    return None


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C ``traceparent``, or None if it is not valid."""
    if not value or len(value) > 512:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace, span, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace) == {"0"} or set(span) == {"0"}:
        return None
    return int(trace, 16), int(span, 16), int(flags, 16)


class Trace:
    """One request's trace ids and attempt spans (times are ``time.perf_counter``, like the record's)."""

    __slots__ = ("_open", "attempts", "parent_id", "sampled", "span_id", "trace_id", "tracestate")

    def __init__(self, trace_id: int, span_id: int, parent_id: int | None, sampled: bool,
                 tracestate: str | None) -> None:
        self.trace_id, self.span_id, self.parent_id = trace_id, span_id, parent_id
        self.sampled, self.tracestate = sampled, tracestate
        # (span id, deployment, start, end, error code, error message) per finished attempt
        self.attempts: list[tuple[int, str, float, float, str | None, str | None]] = []
        self._open: tuple[int, str, float] | None = None

    @property
    def trace_hex(self) -> str:
        return f"{self.trace_id:032x}"

    def start_attempt(self, deployment: str) -> bytes:
        """Open an attempt's span; the header lines to send with it: ``traceparent`` (the attempt
        is the parent) and the client's ``tracestate`` when it sent one."""
        span = _ids.getrandbits(64) or 1
        self._open = (span, deployment, time.perf_counter())
        lines = f"traceparent: 00-{self.trace_id:032x}-{span:016x}-{'01' if self.sampled else '00'}\r\n"
        if self.tracestate:
            lines += f"tracestate: {self.tracestate}\r\n"
        return lines.encode("ascii")

    def end_attempt(self, error: BaseException | None) -> None:
        if self._open is None:
            return
        span, deployment, start = self._open
        self._open = None
        code = message = None
        if error is not None:
            code = getattr(error, "code", None) or type(error).__name__
            message = getattr(error, "message", None) or str(error)
        self.attempts.append((span, deployment, start, time.perf_counter(), code, message))


class Tracer:
    """The process's trace sink: ``begin`` per request, ``put`` per finished record."""

    def __init__(self, exporter: SpanExporter | ProcessExporter, *, ratio: float, service_name: str | None,
                 queue_size: int = 10_000, batch_size: int = 512, export_interval_s: float = 1.0) -> None:
        """``exporter``: the SDK's (spans built and exported in this process's thread), or a
        :class:`~labgate.telemetry.export.ProcessExporter` (records shipped to an export process)."""
        self._exporter = exporter
        if getattr(exporter, "takes_records", False):
            self._ship = exporter.ship  # type: ignore[union-attr]
        else:
            from labgate.telemetry.spans import SpanBuilder

            self._builder = SpanBuilder(service_name)
            self._ship = self._export_spans
        self._bound = int(ratio * (1 << 64))  # sampled when the trace id's low 64 bits are below this
        self._queue: deque[RequestRecord] = deque()
        self._size, self._batch, self._interval = queue_size, batch_size, export_interval_s
        self.exported = self.dropped = self.failed = 0
        self._warned = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labgate-traces", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: TracingConfig) -> Tracer | None:
        """The tracer ``tracing:`` asks for, or None when it is off (then tracing costs nothing)."""
        if not config.enabled:
            return None
        problem = missing_sdk()
        if problem is not None:
            raise RuntimeError(problem)
        exporter: SpanExporter | ProcessExporter
        if config.export == "process":
            from labgate.telemetry.export import ProcessExporter

            exporter = ProcessExporter(config)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=config.headers,
                                        timeout=config.export_timeout_s)
        return cls(exporter, ratio=_ratio(config.sampling_ratio), service_name=config.service_name,
                   queue_size=config.queue_size, batch_size=config.batch_size,
                   export_interval_s=config.export_interval_s)

    # --- the request path ------------------------------------------------------------

    def begin(self, record: RequestRecord) -> None:
        """Give the record its trace (or none: not sampled, and no client context to pass on).

        Without a client ``traceparent`` (the common case) this is one random draw and one comparison:
        an unsampled request gets no :class:`Trace`, no ids and no header, and ``put`` drops it at once."""
        given = record.traceparent
        if given is None:
            trace_id = _ids.getrandbits(128) or 1
            if (trace_id & 0xFFFF_FFFF_FFFF_FFFF) < self._bound:
                record.trace = Trace(trace_id, _ids.getrandbits(64) or 1, None, True, None)
            return
        parent = parse_traceparent(given)
        if parent is not None:  # follow the client's decision (parent-based sampling)
            trace_id, parent_id, flags = parent
            state = record.tracestate
            if state is not None and (len(state) > MAX_TRACESTATE or not _TRACESTATE.fullmatch(state)):
                state = None
            record.trace = Trace(trace_id, _ids.getrandbits(64) or 1, parent_id, bool(flags & 1), state)
            return
        trace_id = _ids.getrandbits(128) or 1
        if (trace_id & 0xFFFF_FFFF_FFFF_FFFF) < self._bound:
            record.trace = Trace(trace_id, _ids.getrandbits(64) or 1, None, True, None)

    def put(self, record: RequestRecord) -> None:
        """Queue a finished, sampled record for export."""
        trace = record.trace
        if trace is None or not trace.sampled:
            return
        if len(self._queue) >= self._size:
            self.dropped += 1
            return
        self._queue.append(record)

    # --- the export thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            records = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
            try:
                ok, reason = self._ship(records)
            except Exception as exc:  # the exporter's own errors (network, encoding, a pipe): count, never raise
                ok, reason = False, str(exc)
            if ok:
                self.exported += len(records)
            else:
                self.failed += len(records)
                self._warn(f"could not export {len(records)} trace(s): {reason}")
        if self.dropped and time.monotonic() - self._warned > _WARN_EVERY_S:
            self._warn(f"{self.dropped} trace(s) dropped so far: the export queue was full")

    def _export_spans(self, records: list[RequestRecord]) -> tuple[bool, str]:
        spans = [span for record in records for span in self._builder.spans(record)]
        result = self._exporter.export(spans)  # type: ignore[union-attr]  # thread mode: the SDK's exporter
        return getattr(result, "name", "") == "SUCCESS", "the collector refused the batch"

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned > _WARN_EVERY_S:
            self._warned = now
            log.warning(message)

    def close(self) -> None:
        """Export what is queued and stop the thread (blocking: call it off the event loop)."""
        self._stop.set()
        self._thread.join()
        self._exporter.shutdown()

    def stats(self) -> dict[str, Any]:
        return {"exported": self.exported, "dropped": self.dropped, "failed": self.failed,
                "queued": len(self._queue)}


def _ratio(configured: float | None) -> float:
    if configured is not None:
        return configured
    if os.environ.get("OTEL_TRACES_SAMPLER", "") in ("traceidratio", "parentbased_traceidratio"):
        try:
            return min(max(float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1")), 0.0), 1.0)
        except ValueError:
            log.warning("OTEL_TRACES_SAMPLER_ARG is not a number: sampling every request")
    return 1.0
