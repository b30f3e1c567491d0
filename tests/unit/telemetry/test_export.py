"""``telemetry.export``: traced records shipped to the export process as tuples, and that process's life."""

from __future__ import annotations

import marshal
import time
from typing import Any

import pytest

from labgate.config.schema.tracing import TracingConfig
from labgate.errors import AttemptFailure, UpstreamStatusError
from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.telemetry.traces import Trace, Tracer

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra: pip install 'labgate[otel]'")
otlp_module = pytest.importorskip("labgate.testing.otlp", reason="needs opentelemetry-proto (dev extra)")

from labgate.telemetry.export import ProcessExporter, record_from_wire, wire  # noqa: E402
from labgate.telemetry.spans import SpanBuilder  # noqa: E402


def traced() -> RequestRecord:
    """A record with every part a span reads: a failed and a good attempt, a cache lookup, a queue wait, a stream."""
    r = RequestRecord("req_1", "chat", "10.0.0.1", "client-1", started=100.0, timestamp=1_700_000_000.0)
    r.model, r.provider, r.deployment, r.stream = "m", "p", "p/m", True
    r.trace = Trace(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x1234, 0xB7AD6B7169203331, True, "vendor=abc")
    r.trace.attempts = [(11, "q/m", 100.01, 100.02, "upstream_server_error", "q answered 503"),
                        (12, "p/m", 100.03, 100.05, None, None)]
    r.cache_status, r.cache_lookup = "miss", (100.001, 100.002)
    r.queue_wait, r.queue_ms, r.priority = (100.021, 100.029), 8.0, "high"
    r.usage, r.finish_reason, r.attempts = Usage(7, 5), "stop", 2
    r.first_token, r.finished, r.experiment, r.variant = 100.06, 100.2, "exp", "b"
    r.failures.append(AttemptFailure("q/m", UpstreamStatusError("q answered 503", upstream_status=503)))
    return r


def comparable(spans: list[Any]) -> list[tuple[Any, ...]]:
    """Everything but the random ids of the spans labgate names itself (route, cache lookup, queue wait, stream)."""
    return [(s.name, s.kind, s.start_time, s.end_time, dict(s.attributes), s.status.status_code,
             s.status.description, [(e.name, e.timestamp, dict(e.attributes)) for e in s.events],
             s.context.trace_id, str(s.context.trace_state)) for s in spans]


def test_the_wire_form_survives_marshal_and_builds_the_same_spans() -> None:
    builder = SpanBuilder("t")
    record = traced()
    shipped = record_from_wire(marshal.loads(marshal.dumps(wire(record))))
    assert comparable(builder.spans(shipped)) == comparable(builder.spans(record))
    names = [s.name for s in builder.spans(shipped)]
    assert names == ["route", "cache lookup", "queue wait", "upstream q/m", "upstream p/m", "stream", "chat m"]


def test_records_reach_the_collector_through_the_export_process_and_a_dead_one_is_replaced() -> None:
    with otlp_module.OtlpReceiver().run_in_thread() as otlp:
        config = TracingConfig(enabled=True, endpoint=otlp.url, export_interval_s=0.02, service_name="p")
        exporter = ProcessExporter(config)
        tracer = Tracer(exporter, ratio=1.0, service_name=None, export_interval_s=0.02)
        try:
            first = traced()
            tracer.put(first)
            until(lambda: any(s.trace_id == f"{first.trace.trace_id:032x}" for s in otlp.spans))  # type: ignore[union-attr]
            assert exporter._child is not None
            exporter._child.kill()  # the export process dies
            exporter._child.wait()
            lost, second = traced(), traced()
            second.trace = Trace(0xABC, 0x99, None, True, None)
            tracer.put(lost)  # this batch meets the dead pipe: counted as failed, a new process starts
            until(lambda: tracer.stats()["failed"] == 1)
            tracer.put(second)
            until(lambda: any(s.trace_id == f"{0xABC:032x}" for s in otlp.spans))
            assert exporter.started == 2
        finally:
            tracer.close()
        assert exporter._child is None  # stopped: stdin closed, the process exported and exited


def test_the_tracer_ships_records_without_building_spans_in_this_process() -> None:
    config = TracingConfig(enabled=True, endpoint="http://127.0.0.1:9/v1/traces")
    tracer = Tracer.from_config(config)
    assert tracer is not None
    try:
        assert isinstance(tracer._exporter, ProcessExporter) and not hasattr(tracer, "_builder")
    finally:
        tracer.close()
    thread = Tracer.from_config(TracingConfig(enabled=True, endpoint="http://127.0.0.1:9/v1/traces", export="thread"))
    assert thread is not None and not isinstance(thread._exporter, ProcessExporter)
    thread.close()


def until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)
