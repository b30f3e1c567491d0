"""``telemetry.traces``: the W3C trace context, sampling, and the export queue."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgate.config.schema.tracing import TracingConfig
from labgate.errors import UpstreamStatusError
from labgate.record import RequestRecord
from labgate.telemetry import traces
from labgate.telemetry.traces import Trace, Tracer, parse_traceparent

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra: pip install 'labgate[otel]'")
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class Exporter(SpanExporter):
    def __init__(self, fail: Exception | None = None) -> None:
        self.batches: list[Sequence[Any]] = []
        self.fail = fail

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        if self.fail is not None:
            raise self.fail
        self.batches.append(spans)
        return SpanExportResult.SUCCESS


def tracer(ratio: float = 1.0, exporter: SpanExporter | None = None, **options: Any) -> Tracer:
    return Tracer(exporter or Exporter(), ratio=ratio, service_name="t", export_interval_s=3600, **options)


def finished(traceparent: str | None = None, tracestate: str | None = None) -> RequestRecord:
    r = RequestRecord("req", "chat", traceparent=traceparent, tracestate=tracestate)
    r.model, r.provider, r.deployment = "m", "p", "p/m"
    r.finished = r.started + 0.01
    return r


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.integers(0, 255))
def test_a_valid_traceparent_is_read_back(trace_id: int, span_id: int, flags: int) -> None:
    assert parse_traceparent(f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}") == (trace_id, span_id, flags)


@given(st.text(max_size=80))
def test_any_text_is_read_or_refused_never_raises(text: str) -> None:
    result = parse_traceparent(text)
    assert result is None or (result[0] > 0 and result[1] > 0)


@pytest.mark.parametrize("value", [
    None, "", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # too few parts
    "00-" + "0" * 32 + "-b7ad6b7169203331-01", "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",  # version 00 has nothing after flags
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "x" * 600])
def test_invalid_traceparents_are_refused(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_a_future_version_may_carry_more_fields() -> None:
    assert parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more") == (
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1)


def test_tracing_is_off_by_default_and_then_costs_nothing() -> None:
    assert TracingConfig().enabled is False
    assert Tracer.from_config(TracingConfig()) is None


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, 0), (1.0, 2000)])
def test_the_sampling_ratio_without_a_client_context(ratio: float, expected: int) -> None:
    t = tracer(ratio)
    records = [finished() for _ in range(2000)]
    for r in records:
        t.begin(r)
    assert sum(r.trace is not None for r in records) == expected
    t.close()


def test_about_a_tenth_is_sampled_at_ratio_0_1() -> None:
    t = tracer(0.1)
    records = [finished() for _ in range(20_000)]
    for r in records:
        t.begin(r)
    assert 1700 < sum(r.trace is not None for r in records) < 2300
    t.close()


def test_the_clients_decision_wins_over_the_ratio() -> None:
    t = tracer(0.0)
    r = finished("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "a=1")
    t.begin(r)
    assert r.trace is not None and r.trace.sampled and r.trace.tracestate == "a=1"
    assert r.trace.parent_id == 0xB7AD6B7169203331
    unsampled = finished("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
    t.begin(unsampled)
    assert unsampled.trace is not None and not unsampled.trace.sampled
    t.put(unsampled)
    assert t.stats()["queued"] == 0  # followed, never exported
    t.close()


@pytest.mark.parametrize("state", ["a=1\r\nx-injected: 1", "é=1", "a=" + "x" * traces.MAX_TRACESTATE])
def test_a_tracestate_that_is_not_printable_ascii_or_too_long_is_dropped(state: str) -> None:
    t = tracer()
    r = finished("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", state)
    t.begin(r)
    assert r.trace is not None and r.trace.tracestate is None
    assert b"\r\n" not in r.trace.start_attempt("p/m").rstrip(b"\r\n")
    t.close()


def test_an_attempt_span_sends_its_own_id_as_the_parent() -> None:
    trace = Trace(0xAB, 0xCD, None, True, "v=1")
    header = trace.start_attempt("p/m")
    trace.end_attempt(UpstreamStatusError("down", upstream_status=503))
    ((span, deployment, start, end, code, message),) = trace.attempts
    assert header == f"traceparent: 00-{0xAB:032x}-{span:016x}-01\r\ntracestate: v=1\r\n".encode()
    assert (deployment, code, message) == ("p/m", "upstream_server_error", "down")
    assert start <= end


def test_a_full_queue_drops_and_counts() -> None:
    t = tracer(queue_size=3)
    for _ in range(5):
        r = finished()
        t.begin(r)
        t.put(r)
    assert t.stats() == {"exported": 0, "dropped": 2, "failed": 0, "queued": 3}
    t.close()  # exports what is queued
    assert t.stats() == {"exported": 3, "dropped": 2, "failed": 0, "queued": 0}


def test_an_exporter_that_fails_is_counted_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    t = tracer(exporter=Exporter(fail=ConnectionError("refused")))
    r = finished()
    t.begin(r)
    t.put(r)
    t.close()
    assert t.stats()["failed"] == 1
    assert "could not export 1 trace(s): refused" in caplog.text


def test_the_export_thread_sends_batches() -> None:
    exporter = Exporter()
    t = Tracer(exporter, ratio=1.0, service_name="t", export_interval_s=0.01, batch_size=2)
    for _ in range(3):
        r = finished()
        t.begin(r)
        t.put(r)
    deadline = time.monotonic() + 30
    while t.stats()["exported"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert [len(b) for b in exporter.batches] == [4, 2]  # 2 spans per request (route, request): batches of 2
    t.close()


def test_the_sampler_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert traces._ratio(None) == 0.25
    assert traces._ratio(0.5) == 0.5  # gateway.yaml wins
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "lots")
    assert traces._ratio(None) == 1.0


def test_without_the_sdk_serve_refuses_tracing_and_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from labgate.cli import serve
    from labgate.cli.main import main

    monkeypatch.setattr(serve, "_install_uvloop", lambda: None)  # leave this process's event loop policy alone
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    assert "pip install 'labgate[otel]'" in (traces.missing_sdk() or "")
    with pytest.raises(RuntimeError, match=r"labgate\[otel\]"):
        Tracer.from_config(TracingConfig(enabled=True))
    (tmp_path / "providers.yaml").write_text("providers: {}\n")
    (tmp_path / "gateway.yaml").write_text("tracing: {enabled: true}\nserver: {port: 1}\n")
    assert main(["serve", "--config", str(tmp_path)]) == 1
    assert "labgate: tracing.enabled needs the OpenTelemetry SDK" in capsys.readouterr().err


def test_the_single_file_form_takes_a_tracing_section(tmp_path: Any) -> None:
    from labgate.config.load import load_config

    (tmp_path / "labgate.yaml").write_text(
        "providers:\n  sim: {type: openai_compatible, base_url: 'http://127.0.0.1:9/v1', models: [m]}\n"
        "tracing: {enabled: true, sampling_ratio: 0.25, endpoint: 'http://127.0.0.1:4318/v1/traces'}\n")
    tracing = load_config(tmp_path / "labgate.yaml").gateway.tracing
    assert (tracing.enabled, tracing.sampling_ratio, tracing.endpoint) == (
        True, 0.25, "http://127.0.0.1:4318/v1/traces")


def test_a_reload_says_tracing_changes_wait_for_a_restart() -> None:
    from labgate.config.reload import RESTART_ONLY

    assert "gateway.tracing.enabled".startswith(RESTART_ONLY)
