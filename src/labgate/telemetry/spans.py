"""A finished request record as OpenTelemetry span data (the SDK's ``ReadableSpan``).

Runs in the trace export thread, never on the request path. The tree::

    chat m1                      SERVER  the whole request (attributes below)
    ├── route                    INTERNAL  from the start to the first attempt or queue wait (auth, parse, resolve)
    │   └── cache lookup         INTERNAL  the response cache's lookup, when one was made: hit or miss
    ├── queue wait               INTERNAL  waiting for capacity (routing/queue.py), when the request had to
    ├── upstream sim/m1          CLIENT  one per attempt; ERROR status with the failure's code
    ├── upstream other/m1        CLIENT
    └── stream                   INTERNAL  streams: from the head to the last byte; event first_token

Attributes follow the OpenTelemetry GenAI semantic conventions (``gen_ai.*``), plus
labgate's own (``labgate.*``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from labgate.record import RequestRecord
from labgate.telemetry.traces import Trace, _ids

_OPERATIONS = {"chat": "chat", "messages": "chat", "completions": "text_completion", "embeddings": "embeddings"}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class SpanBuilder:
    def __init__(self, service_name: str | None) -> None:
        self.resource = Resource.create({SERVICE_NAME: service_name} if service_name else None)
        if str(self.resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            self.resource = self.resource.merge(Resource({SERVICE_NAME: "labgate"}))
        try:
            labgate_version = version("labgate")
        except PackageNotFoundError:
            labgate_version = "unknown"
        self.scope = InstrumentationScope("labgate", labgate_version)

    def spans(self, record: RequestRecord) -> list[ReadableSpan]:
        """The request's span and its children (the request span last, as a live tracer would end them)."""
        trace = record.trace
        assert trace is not None and record.finished is not None
        started = record.started

        def ns(t: float) -> int:  # perf_counter time -> Unix ns, through the record's two clocks
            return int((record.timestamp + (t - started)) * 1e9)

        root = self._context(trace, trace.span_id, trace.tracestate)
        parent = None if trace.parent_id is None else SpanContext(trace.trace_id, trace.parent_id, is_remote=True,
                                                                   trace_flags=_SAMPLED)
        out: list[ReadableSpan] = []
        routed = trace.attempts[0][2] if trace.attempts else record.finished
        waited = record.queue_wait
        if waited is not None and waited[0] < routed:
            routed = waited[0]  # the request queued before its first attempt
        route = self._context(trace, _ids.getrandbits(64) or 1, None)
        out.append(self._span("route", trace, root, ns(started), ns(routed), SpanKind.INTERNAL,
                              {"gen_ai.request.model": record.model or "",
                               "labgate.routed": record.provider is not None}, context=route))
        if record.cache_lookup is not None:
            start, end = record.cache_lookup
            out.append(self._span("cache lookup", trace, route, ns(start), ns(end), SpanKind.INTERNAL,
                                  {"labgate.cache": record.cache_status or "miss",
                                   "labgate.cache_hit": record.cache_hit}))
        if waited is not None:
            got = record.queue_ms is not None  # else it timed out, or the client left while queued
            waiting: dict[str, Any] = {"labgate.queue_ms": record.queue_ms} if got else {}
            if record.priority is not None:
                waiting["labgate.priority"] = record.priority
            out.append(self._span("queue wait", trace, root, ns(waited[0]), ns(waited[1]), SpanKind.INTERNAL,
                                  waiting, status=None if got or record.error_type is None
                                  else Status(StatusCode.ERROR, record.error_message)))
        for span_id, deployment, start, end, code, message in trace.attempts:
            provider, _, model = deployment.partition("/")
            attributes: dict[str, Any] = {"labgate.deployment": deployment, "gen_ai.provider.name": provider,
                                          "gen_ai.request.model": model}
            status = Status(StatusCode.UNSET)
            if code is not None:
                attributes["error.type"] = code
                status = Status(StatusCode.ERROR, message)
            out.append(self._span(f"upstream {deployment}", trace, root, ns(start), ns(end), SpanKind.CLIENT,
                                  attributes, status=status, span_id=span_id))
        if record.stream and trace.attempts and trace.attempts[-1][4] is None:
            first = record.first_token or record.first_byte
            events = [] if first is None else [Event("gen_ai.first_token", {"labgate.ttft_ms": record.ttft_ms or 0.0},
                                                     ns(first))]
            failed = record.outcome == "stream_error"
            out.append(self._span("stream", trace, root, ns(trace.attempts[-1][3]), ns(record.finished),
                                  SpanKind.INTERNAL, {"labgate.outcome": record.outcome}, events=events,
                                  status=Status(StatusCode.ERROR, record.error_message) if failed else None))
        out.append(ReadableSpan(
            name=f"{_OPERATIONS.get(record.endpoint, record.endpoint)} {record.model or ''}".strip(),
            context=root, parent=parent, resource=self.resource, attributes=_request_attributes(record),
            kind=SpanKind.SERVER, status=_request_status(record), start_time=ns(started),
            end_time=ns(record.finished), instrumentation_scope=self.scope))
        return out

    def _span(self, name: str, trace: Trace, parent: SpanContext, start: int, end: int, kind: SpanKind,
              attributes: dict[str, Any], *, status: Status | None = None, span_id: int | None = None,
              events: list[Event] | None = None, context: SpanContext | None = None) -> ReadableSpan:
        if context is None:
            context = self._context(trace, span_id or (_ids.getrandbits(64) or 1), None)
        return ReadableSpan(name=name, context=context, parent=parent, resource=self.resource,
                            attributes=attributes, events=events or (), kind=kind,
                            status=status or Status(StatusCode.UNSET), start_time=start, end_time=end,
                            instrumentation_scope=self.scope)

    @staticmethod
    def _context(trace: Trace, span_id: int, tracestate: str | None) -> SpanContext:
        state = TraceState.from_header([tracestate]) if tracestate else None
        return SpanContext(trace.trace_id, span_id, is_remote=False, trace_flags=_SAMPLED, trace_state=state)


def _request_attributes(record: RequestRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": _OPERATIONS.get(record.endpoint, record.endpoint),
        "http.response.status_code": record.status,
        "labgate.request_id": record.request_id,
        "labgate.endpoint": record.endpoint,
        "labgate.stream": record.stream,
        "labgate.outcome": record.outcome,
        "labgate.attempts": record.attempts,
        "labgate.cache_hit": record.cache_hit,
    }
    optional = {
        "gen_ai.request.model": record.model, "gen_ai.provider.name": record.provider,
        "labgate.deployment": record.deployment, "labgate.experiment": record.experiment,
        "labgate.variant": record.variant, "error.type": record.error_type, "labgate.cache": record.cache_status,
        "labgate.client_request_id": record.client_request_id, "labgate.ttft_ms": record.ttft_ms,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    if record.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = record.usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = record.usage.completion_tokens
    if record.finish_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [record.finish_reason]
    return attributes


def _request_status(record: RequestRecord) -> Status:
    if record.outcome == "stream_error" or (record.outcome == "error" and record.status >= 500):
        return Status(StatusCode.ERROR, record.error_message)
    return Status(StatusCode.UNSET)
