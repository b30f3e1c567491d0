"""``gateway.yaml`` ``tracing:``: OpenTelemetry traces sent over OTLP/HTTP (extra ``labgate[otel]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labgate.config.schema.base import Strict


class TracingConfig(Strict):
    """Off by default. A key left unset (``null``) takes the standard ``OTEL_*`` variable, then
    the SDK's default: ``endpoint`` ← ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (+ ``/v1/traces``) / ``http://localhost:4318/v1/traces``;
    ``headers`` ← ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS``; ``service_name`` ←
    ``OTEL_SERVICE_NAME`` / ``labgate``; ``sampling_ratio`` ← ``OTEL_TRACES_SAMPLER_ARG``
    (with ``OTEL_TRACES_SAMPLER`` ``traceidratio`` or ``parentbased_traceidratio``) / 1.0.
    A client's ``traceparent`` that says "sampled" is always followed.
    """

    enabled: bool = False
    endpoint: str | None = None  # the full OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces
    headers: dict[str, str] | None = None
    service_name: str | None = None
    sampling_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    queue_size: int = Field(default=10_000, ge=1)  # finished requests waiting for export; beyond: dropped
    batch_size: int = Field(default=512, ge=1)  # requests per export call
    export_interval_s: float = Field(default=1.0, gt=0)  # how often the export thread wakes
    export_timeout_s: float = Field(default=10.0, gt=0)
    # process: spans are built and sent by a child process (python -m labgate.telemetry.export), off the
    # serving process's GIL; thread: by a thread in the serving process (one process fewer)
    export: Literal["process", "thread"] = "process"
