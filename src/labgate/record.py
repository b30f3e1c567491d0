"""The record of one request: filled in along the way, written once at the end.

It is what the access log prints and what the history store, metrics and
spend tracking consume. It never holds secrets. It keeps a *reference* to the
parsed request (``payload``) and, when history captures content, to the
response bytes (``reply`` / ``chunks``): nothing is copied or serialised on
the hot path; the history writer extracts what it stores later, off it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from labgate.errors import AttemptFailure
from labgate.providers.base import Usage

if TYPE_CHECKING:
    from labgate.telemetry.traces import Trace

CLIENT_CLOSED = 499  # nginx's convention for "the client went away first"
ANTHROPIC_ENDPOINTS = frozenset({"messages"})  # served by server/anthropic.py


def span_ms(start: float, end: float | None) -> float | None:
    """``end - start`` (seconds) in milliseconds to the µs; ``None`` when ``end`` is.

    ``int(x * 1e6 + 0.5) / 1000``, not ``round(x * 1000, 3)``: the same value for these non-negative
    durations but for a tie (up here, to even there; ~1 in 15,000), and ``round`` of a float to digits
    formats and parses it again, ~3x the cost. ``RequestRecord.as_log`` writes it inline (hot path).
    """
    return None if end is None else int((end - start) * 1e6 + 0.5) / 1000


@dataclass(slots=True)
class RequestRecord:
    request_id: str  # labgate's own (server/ids.py): unique, unguessable
    endpoint: str
    client_ip: str | None = None
    client_request_id: str | None = None  # the client's x-request-id, when sane; never names a record
    started: float = field(default_factory=time.perf_counter)
    timestamp: float = field(default_factory=time.time)
    key_id: str | None = None  # a hash prefix of the master key, or a virtual key's id: never the key
    api_key: Any = None  # the virtual key (keys.VirtualKey: no secret in it); None: master key or no auth
    model: str | None = None
    stream: bool = False
    provider: str | None = None
    deployment: str | None = None
    attempts: int = 0
    failures: list[AttemptFailure] = field(default_factory=list)
    status: int = 200
    outcome: str = "ok"  # ok | error | client_disconnected | stream_error
    error_type: str | None = None
    error_message: str | None = None
    first_byte: float | None = None
    first_token: float | None = None  # streams: when the first content passed (not the role chunk)
    finished: float | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    experiment: str | None = None  # the A/B experiment that took the request (routing/experiments.py)
    variant: str | None = None
    headers: Any = None  # the request's headers, kept only while experiments are configured (their units, tags)
    cache_hit: bool = False
    cost: float | None = None  # USD (cost.py); None: the deployment has no known price
    reservation: Any = None  # what the limiter took (state.limits.Reservation), settled at finish
    budget_fallback: str | None = None  # the budget that sent this request to budgets.fallback_model
    routing: str | None = None  # a local_first route's decision: local | cloud (why)
    tags: list[str] | None = None
    priority: str | None = None  # the x-labgate-priority header as sent (read only when a queue exists)
    queue_ms: float | None = None  # time spent waiting for capacity, when it had to wait
    queue_wait: tuple[float, float] | None = None  # (start, end) of that wait, perf_counter (the span's times)
    spill: str | None = None  # why a preferred deployment was passed over for load (prefer_local_under)
    rescues: int = 0  # streams continued on another deployment after a break (routing/rescue.py)
    payload: dict[str, Any] | None = None  # the parsed request body, by reference
    body: bytes | None = None  # the request's bytes, by reference (what history reads parameters from)
    reply: bytes | None = None  # a whole answer's body (history capture "full" only)
    chunks: list[bytes] | None = None  # a stream's relayed bytes (history capture "full", or a cache miss)
    # the response cache (state/cache.py): None when no cache is configured
    cache_status: str | None = None  # hit | miss | bypass | off | unavailable
    cache_age: int | None = None  # hits: seconds since the entry was stored (the `age` header)
    cache_bytes: int = 0  # hits: bytes served from the cache; misses: bytes stored
    cache_control: str | None = None  # the request's cache-control header (set by the surface)
    cache_ticket: Any = None  # a miss to store when the request finishes (state.cache.Ticket)
    cache_lookup: tuple[float, float] | None = None  # (start, end) of the store lookup, perf_counter; None: none
    traceparent: str | None = None  # the client's W3C trace context headers, as sent
    tracestate: str | None = None
    trace: Trace | None = None  # set when tracing is on and this request is traced (telemetry/traces.py)

    @property
    def dialect(self) -> str:
        """The API dialect the client speaks (its error statuses differ: see ``LabgateError.status_in``)."""
        return "anthropic" if self.endpoint in ANTHROPIC_ENDPOINTS else "openai"

    @property
    def latency_ms(self) -> float | None:
        return span_ms(self.started, self.finished)

    @property
    def ttft_ms(self) -> float | None:
        return span_ms(self.started, self.first_token or self.first_byte)

    def as_log(self) -> dict[str, Any]:
        usage, started, finished, failures = self.usage, self.started, self.finished, self.failures
        first = self.first_token or self.first_byte  # latency_ms and ttft_ms, without their calls
        # span_ms inline (hot path: the access log line of every request)
        entry = {
            "request_id": self.request_id, "client_request_id": self.client_request_id,
            "ts": int(self.timestamp * 1000 + 0.5) / 1000, "endpoint": self.endpoint,
            "model": self.model, "stream": self.stream, "provider": self.provider,
            "deployment": self.deployment, "status": self.status, "outcome": self.outcome,
            "latency_ms": None if finished is None else int((finished - started) * 1e6 + 0.5) / 1000,
            "ttft_ms": None if first is None else int((first - started) * 1e6 + 0.5) / 1000,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "finish_reason": self.finish_reason, "attempts": self.attempts,
            "failed_attempts": [{"deployment": f.deployment, "error": f.error.code,
                                 "message": f.error.message} for f in failures] if failures else None,
            "error_type": self.error_type, "error": self.error_message,
            "key_id": self.key_id, "client_ip": self.client_ip,
            "cache": self.cache_status,
            "trace_id": None if self.trace is None else self.trace.trace_hex,
        }
        # traffic control, only when it happened (capacity, spill, rescue: docs/reliability.md)
        if self.queue_ms is not None:
            entry["queue_ms"] = self.queue_ms
        if self.spill is not None:
            entry["spill"] = self.spill
        if self.rescues:
            entry["rescues"] = self.rescues
        return entry


def _opener() -> Callable[[str, str, str | None, str | None], RequestRecord]:
    """``RequestRecord(request_id, endpoint, client_ip, client_request_id)``, built without the dataclass's
    ``__init__``: a call of ~50 parameters through ``type.__call__`` costs ~7,900 instructions, storing the
    same defaults from constants ~6,100 (callgrind). Generated from the fields, as dataclasses does, so a
    new field is picked up; ``tests/unit/test_record.py`` checks it equals the dataclass's constructor."""
    names: dict[str, Any] = {"_new": object.__new__, "_cls": RequestRecord}
    lines = ["def open_record(request_id, endpoint, client_ip=None, client_request_id=None):",
             "    self = _new(_cls)", "    self.request_id = request_id", "    self.endpoint = endpoint",
             "    self.client_ip = client_ip", "    self.client_request_id = client_request_id"]
    for f in fields(RequestRecord)[4:]:
        if f.default_factory is list:
            value = "[]"
        elif f.default_factory is not MISSING:
            names[f"_make_{f.name}"] = f.default_factory
            value = f"_make_{f.name}()"
        elif f.default is None or type(f.default) in (bool, int, float, str):
            value = repr(f.default)
        else:
            names[f"_default_{f.name}"] = f.default
            value = f"_default_{f.name}"
        lines.append(f"    self.{f.name} = {value}")
    lines.append("    return self")
    exec("\n".join(lines), names)  # our own source, built from our own field list
    return names["open_record"]


open_record = _opener()
