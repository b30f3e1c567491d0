"""An OTLP/HTTP trace receiver for tests and benchmarks (no collector is needed).

    with OtlpReceiver().run_in_thread() as otlp:
        ... gateway.yaml tracing.endpoint: otlp.url ...
        spans = otlp.wait_for(3)

It accepts ``POST /v1/traces`` (``application/x-protobuf``, optionally gzip), decodes the
``ExportTraceServiceRequest`` with ``opentelemetry-proto`` and keeps each span as a
:class:`ReceivedSpan`. Needs the ``aiohttp`` and ``opentelemetry-proto`` packages (dev extra).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    kind: int  # the OTLP enum: 1 internal, 2 server, 3 client
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]  # (name, time in ns, attributes)
    status: int  # 0 unset, 1 ok, 2 error
    status_message: str
    start_ns: int
    end_ns: int
    resource: dict[str, Any] = field(default_factory=dict)
    trace_state: str = ""


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.url = ""
        self._lock = threading.Lock()

    async def _traces(self, request: web.Request) -> web.Response:
        data = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            data = gzip.decompress(data)
        message = ExportTraceServiceRequest()
        message.ParseFromString(data)
        received = []
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(ReceivedSpan(
                        s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                        _attributes(s.attributes), [(e.name, e.time_unix_nano, _attributes(e.attributes))
                                                    for e in s.events],
                        s.status.code, s.status.message, s.start_time_unix_nano, s.end_time_unix_nano, resource,
                        s.trace_state))
        with self._lock:
            self.requests += 1
            self.spans.extend(received)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        """The spans received so far, once there are at least ``count``."""
        deadline = time.monotonic() + timeout
        while len(self.spans) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.spans)} span(s) received, expected {count}: {self.spans}")
            time.sleep(0.02)
        with self._lock:
            return list(self.spans)

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()

    @contextmanager
    def run_in_thread(self) -> Iterator[OtlpReceiver]:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        runner = web.AppRunner(app, access_log=None)
        thread = threading.Thread(target=loop.run_forever, daemon=True, name="otlp-receiver")
        thread.start()

        async def start() -> int:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        self.url = f"http://127.0.0.1:{port}/v1/traces"
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)
