"""``Metrics``: what observe() counts, and the text render() makes of it (checked line by line)."""

from __future__ import annotations

import pytest

from labgate.config.schema.metrics import MetricsConfig
from labgate.errors import AttemptFailure, UpstreamRateLimitError, UpstreamStatusError
from labgate.providers.base import Usage
from labgate.record import CLIENT_CLOSED, RequestRecord
from labgate.telemetry import metrics as metrics_module
from labgate.telemetry.metrics import BUCKETS, Metrics
from labgate.testing.prometheus import parse_metrics

LE = [repr(b) for b in BUCKETS] + ["+Inf"]


def record(model: str | None = "m", *, provider: str | None = "p", endpoint: str = "chat", status: int = 200,
           outcome: str = "ok", seconds: float = 0.3, ttft: float | None = None, usage: Usage | None = None,
           failures: list[AttemptFailure] | None = None) -> RequestRecord:
    """A finished record, as Gateway.finish leaves it (started at 0, so durations are exact)."""
    r = RequestRecord("req", endpoint, started=0.0)
    r.model, r.provider, r.status, r.outcome, r.usage = model, provider, status, outcome, usage
    r.deployment = None if provider is None else f"{provider}/{model}"
    r.finished = seconds
    if ttft is not None:
        r.stream, r.first_byte, r.first_token = True, ttft / 2, ttft
    r.failures = failures or []
    return r


def histogram(name: str, labels: str, counts: list[int], total: float) -> dict[str, float]:
    """The samples of one histogram series: ``counts`` per bucket (not cumulative), with +Inf last."""
    out, cumulative = {}, 0
    for le, count in zip(LE, counts, strict=True):
        cumulative += count
        out[f'{name}_bucket{{{labels},le="{le}"}}'] = cumulative
    return {**out, f"{name}_sum{{{labels}}}": total, f"{name}_count{{{labels}}}": cumulative}


def buckets(**at: int) -> list[int]:
    """16 bucket counts, zero except ``b<index>=count``."""
    counts = [0] * len(LE)
    for key, count in at.items():
        counts[int(key[1:])] = count
    return counts


def test_requests_durations_tokens_and_failures() -> None:
    m = Metrics()
    failure = [AttemptFailure("q/m", UpstreamStatusError("down", upstream_status=503)),
               AttemptFailure("q/m", UpstreamRateLimitError("slow"))]
    m.observe(record(seconds=0.3, usage=Usage(10, 20)))                     # bucket 6 (≤ 0.5)
    m.observe(record(seconds=0.5, usage=Usage(1, 2), failures=failure))     # ≤ 0.5 exactly: bucket 6
    m.observe(record(seconds=0.004, ttft=0.002, usage=Usage(5, 7)))         # bucket 0; a stream
    m.observe(record(seconds=500.0, status=200, outcome="stream_error", ttft=0.2))  # above 120 s: +Inf
    m.observe(record(status=502, outcome="error", seconds=1.0, failures=failure[:1]))  # bucket 7 (≤ 1.0)
    priced = record(endpoint="embeddings", seconds=0.01, usage=Usage(3, 0))  # bucket 1
    priced.cost = 0.25
    m.observe(priced)
    m.observe(record(status=CLIENT_CLOSED, outcome="client_disconnected", seconds=2.0))  # bucket 8

    families = parse_metrics(m.render())
    assert families["labgate_requests_total"].samples == {
        'labgate_requests_total{endpoint="chat",model="m",provider="p",status="200"}': 4,
        'labgate_requests_total{endpoint="chat",model="m",provider="p",status="499"}': 1,
        'labgate_requests_total{endpoint="chat",model="m",provider="p",status="502"}': 1,
        'labgate_requests_total{endpoint="embeddings",model="m",provider="p",status="200"}': 1,
    }
    assert families["labgate_stream_errors_total"].samples == {
        'labgate_stream_errors_total{endpoint="chat",model="m",provider="p"}': 1}
    name = "labgate_request_duration_seconds"
    assert families[name].samples == {
        **histogram(name, 'endpoint="chat",model="m",provider="p"', buckets(b0=1, b6=2, b7=1, b8=1, b15=1),
                    0.3 + 0.5 + 0.004 + 500.0 + 1.0 + 2.0),
        **histogram(name, 'endpoint="embeddings",model="m",provider="p"', buckets(b1=1), 0.01),
    }
    name = "labgate_time_to_first_token_seconds"  # first_token, not first_byte; streams only
    assert families[name].samples == histogram(name, 'model="m",provider="p"', buckets(b0=1, b5=1), 0.202)
    assert families["labgate_tokens_total"].samples == {
        'labgate_tokens_total{model="m",provider="p",type="prompt"}': 19,
        'labgate_tokens_total{model="m",provider="p",type="completion"}': 29,
    }
    assert families["labgate_cost_usd_total"].samples == {'labgate_cost_usd_total{model="m",provider="p"}': 0.25}
    assert families["labgate_upstream_failures_total"].samples == {
        'labgate_upstream_failures_total{deployment="q/m",error="rate_limit_exceeded"}': 1,
        'labgate_upstream_failures_total{deployment="q/m",error="upstream_server_error"}': 2,
    }
    assert families["labgate_build_info"].samples == {f'labgate_build_info{{version="{m.version}"}}': 1}
    assert families["labgate_start_time_seconds"].samples == {"labgate_start_time_seconds": m.started}
    assert "labgate_requests_in_flight" not in families  # no server to ask
    assert [(n, f.kind) for n, f in families.items()] == [
        ("labgate_requests_total", "counter"), ("labgate_stream_errors_total", "counter"),
        ("labgate_request_duration_seconds", "histogram"), ("labgate_time_to_first_token_seconds", "histogram"),
        ("labgate_tokens_total", "counter"), ("labgate_cost_usd_total", "counter"),
        ("labgate_upstream_failures_total", "counter"),
        ("labgate_build_info", "gauge"), ("labgate_start_time_seconds", "gauge")]


def test_a_stream_without_first_token_uses_its_first_byte() -> None:
    m = Metrics()
    r = record(ttft=0.08)
    r.first_token = None  # e.g. a stream that only ever sent the role chunk
    m.observe(r)
    name = "labgate_time_to_first_token_seconds"
    assert parse_metrics(m.render())[name].samples == histogram(name, 'model="m",provider="p"', buckets(b3=1), 0.04)


def test_unrouted_requests_share_one_series_whatever_model_they_named() -> None:
    m = Metrics()
    for n in range(50):
        m.observe(record(f"random-{n}", provider=None, status=404, outcome="error", seconds=0.001))
    m.observe(record(None, provider=None, status=401, outcome="error", seconds=0.001))  # failed before parsing
    families = parse_metrics(m.render())
    assert families["labgate_requests_total"].samples == {
        'labgate_requests_total{endpoint="chat",model="",provider="",status="401"}': 1,
        'labgate_requests_total{endpoint="chat",model="",provider="",status="404"}': 50,
    }
    assert list(families["labgate_request_duration_seconds"].samples)[-1] == (
        'labgate_request_duration_seconds_count{endpoint="chat",model="",provider=""}')
    assert families["labgate_tokens_total"].samples == {}  # nothing routed, nothing used
    assert families["labgate_time_to_first_token_seconds"].samples == {}
    assert m._models == {}


def test_routed_names_past_the_cap_are_counted_as_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_LABEL_VALUES", 2)
    m = Metrics()
    down = UpstreamStatusError("down", upstream_status=500)
    for name in ("a", "b", "c", "d", "a", "d"):  # e.g. provider/model pairs a client made up
        m.observe(record(name, failures=[AttemptFailure(f"p/{name}", down)]))
    families = parse_metrics(m.render())
    assert families["labgate_requests_total"].samples == {
        'labgate_requests_total{endpoint="chat",model="(other)",provider="p",status="200"}': 3,
        'labgate_requests_total{endpoint="chat",model="a",provider="p",status="200"}': 2,
        'labgate_requests_total{endpoint="chat",model="b",provider="p",status="200"}': 1,
    }
    assert families["labgate_upstream_failures_total"].samples == {
        'labgate_upstream_failures_total{deployment="(other)",error="upstream_server_error"}': 3,
        'labgate_upstream_failures_total{deployment="p/a",error="upstream_server_error"}': 2,
        'labgate_upstream_failures_total{deployment="p/b",error="upstream_server_error"}': 1,
    }
    assert sorted(m._models) == ["a", "b"] and sorted(m._deployments) == ["p/a", "p/b"]  # "c", "d" not kept


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.observe(record('we"ird\\na\nme'))
    samples = parse_metrics(m.render())["labgate_requests_total"].samples
    assert samples == {
        'labgate_requests_total{endpoint="chat",model="we\\"ird\\\\na\\nme",provider="p",status="200"}': 1}


def test_in_flight_is_asked_at_render() -> None:
    m = Metrics()
    m.in_flight = lambda: 3
    assert parse_metrics(m.render())["labgate_requests_in_flight"].samples == {"labgate_requests_in_flight": 3}


def test_config_off_means_no_metrics() -> None:
    assert Metrics.from_config(MetricsConfig(enabled=False)) is None
    assert isinstance(Metrics.from_config(MetricsConfig()), Metrics)

