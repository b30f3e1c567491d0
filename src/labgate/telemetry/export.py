"""Trace export in its own process (``tracing.export: process``, the default).

Building the SDK's span objects and encoding OTLP protobuf costs ~100 µs per
traced request: in the serving process that is CPU and GIL time taken from
requests. As the history writer does (``store/process.py``), the serving
process only ships plain tuples; a child process builds and exports the spans::

    gateway process                                      export process (python -m labgate.telemetry.export)
    Tracer.put: the record on a bounded queue            frames ─▶ records ─▶ Tracer (thread mode):
    export thread, every export_interval_s:                SpanBuilder ─▶ OTLPSpanExporter
      wire(record) per record, marshal.dumps(batch) ─▶ stdin

The child inherits the environment (the ``OTEL_*`` variables work there too).
It ignores SIGINT and SIGTERM: it stops when the gateway closes its stdin,
after exporting what it received. If it dies, the batch being sent is counted
as failed and the next batch starts a new one.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import orjson

from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.telemetry.traces import Trace

if TYPE_CHECKING:
    from labgate.config.schema.tracing import TracingConfig

log = logging.getLogger("labgate.traces")
_LEN = 4  # bytes of the little-endian length before each frame
CHILD_INTERVAL_S = 0.05  # how often the child's export thread sends what arrived


def wire(record: RequestRecord) -> tuple[Any, ...]:
    """What :class:`~labgate.telemetry.spans.SpanBuilder` reads of a traced record, as builtins ``marshal`` carries."""
    trace, usage = record.trace, record.usage
    assert trace is not None
    return (trace.trace_id, trace.span_id, trace.parent_id, trace.tracestate, trace.attempts,
            record.request_id, record.endpoint, record.timestamp, record.started, record.finished,
            record.first_token, record.first_byte, record.model, record.provider, record.deployment,
            record.stream, record.status, record.outcome, record.error_type, record.error_message,
            record.attempts, record.cache_hit, record.cache_status, record.cache_lookup, record.queue_wait,
            record.queue_ms, record.priority, record.experiment, record.variant, record.client_request_id,
            None if usage is None else usage.prompt_tokens, None if usage is None else usage.completion_tokens,
            record.finish_reason)


def record_from_wire(w: tuple[Any, ...]) -> RequestRecord:
    (trace_id, span_id, parent_id, tracestate, attempts, request_id, endpoint, timestamp, started, finished,
     first_token, first_byte, model, provider, deployment, stream, status, outcome, error_type, error_message,
     attempt_count, cache_hit, cache_status, cache_lookup, queue_wait, queue_ms, priority, experiment, variant,
     client_request_id, prompt_tokens, completion_tokens, finish_reason) = w
    record = RequestRecord(request_id, endpoint, None, client_request_id, started=started, timestamp=timestamp)
    record.finished, record.first_token, record.first_byte = finished, first_token, first_byte
    record.model, record.provider, record.deployment, record.stream = model, provider, deployment, stream
    record.status, record.outcome, record.error_type, record.error_message = status, outcome, error_type, error_message
    record.attempts, record.cache_hit, record.cache_status = attempt_count, cache_hit, cache_status
    record.cache_lookup, record.queue_wait, record.queue_ms, record.priority = cache_lookup, queue_wait, queue_ms, \
        priority
    record.experiment, record.variant, record.finish_reason = experiment, variant, finish_reason
    if prompt_tokens is not None:
        record.usage = Usage(prompt_tokens, completion_tokens)
    trace = Trace(trace_id, span_id, parent_id, True, tracestate)
    trace.attempts = attempts
    record.trace = trace
    return record


class ProcessExporter:
    """The gateway side: ships batches of traced records to the export process (from the export thread)."""

    takes_records = True

    def __init__(self, config: TracingConfig) -> None:
        self._settings = orjson.dumps({
            "endpoint": config.endpoint, "headers": config.headers, "timeout_s": config.export_timeout_s,
            "service_name": config.service_name, "queue_size": config.queue_size, "batch_size": config.batch_size,
            "log_level": logging.getLogger("labgate").getEffectiveLevel()}).decode()
        self._wait_s = config.export_timeout_s + 5.0
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self.started = 0  # children started (a restart after a death adds one)
        self._spawn()

    def _spawn(self) -> None:
        self._child = subprocess.Popen([sys.executable, "-m", "labgate.telemetry.export", self._settings],
                                       stdin=subprocess.PIPE)
        self.started += 1

    def ship(self, records: list[RequestRecord]) -> tuple[bool, str]:
        """Send one batch; (False, why) when the export process is gone (a new one takes the next batch)."""
        data = marshal.dumps([wire(r) for r in records])
        with self._lock:
            child = self._child
            if child is None or child.stdin is None:
                return False, "the trace export process is stopped"
            try:
                child.stdin.write(len(data).to_bytes(_LEN, "little") + data)
                child.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                log.error("traces: the export process exited (code %s); starting another", child.poll())
                self._spawn()
                return False, f"the trace export process exited ({exc})"
        return True, ""

    def shutdown(self) -> None:
        """Close the child's stdin: it exports what it received and exits (killed after the export timeout)."""
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            with contextlib.suppress(OSError):
                child.stdin.close()
        try:
            child.wait(self._wait_s)
        except subprocess.TimeoutExpired:
            log.error("traces: the export process did not finish in %g s; killing it", self._wait_s)
            child.kill()
            child.wait()


# --- the export process ----------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``python -m labgate.telemetry.export SETTINGS_JSON``: read batches on stdin, export their spans."""
    settings = orjson.loads((argv if argv is not None else sys.argv[1:])[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway says when to stop: by closing our stdin
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from labgate.telemetry.logs import configure_logging
    from labgate.telemetry.traces import Tracer

    configure_logging(logging.getLevelName(settings.get("log_level", logging.INFO)).lower())
    exporter = OTLPSpanExporter(endpoint=settings["endpoint"], headers=settings["headers"],
                                timeout=settings["timeout_s"])
    tracer = Tracer(exporter, ratio=1.0, service_name=settings["service_name"], queue_size=settings["queue_size"],
                    batch_size=settings["batch_size"], export_interval_s=CHILD_INTERVAL_S)
    stdin = sys.stdin.buffer
    while True:
        head = stdin.read(_LEN)
        if len(head) < _LEN:
            break  # the gateway closed our stdin (a clean stop) or died: export what we have, then exit
        body = stdin.read(int.from_bytes(head, "little"))
        try:
            wires = marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            break  # cut short: the gateway died mid-write
        for w in wires:
            tracer.put(record_from_wire(w))
    tracer.close()
    stats = tracer.stats()
    if stats["failed"] or stats["dropped"]:
        log.warning("traces: the export process stops: %d exported, %d failed, %d dropped",
                    stats["exported"], stats["failed"], stats["dropped"])


if __name__ == "__main__":
    main()
