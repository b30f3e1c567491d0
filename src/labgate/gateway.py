"""The request lifecycle in one screen: auth → parse → resolve → attempts → record.

Read this first. The server hands each API request here; everything below
(routing, providers, telemetry) is called from these few lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from labgate.errors import InternalError, LabgateError
from labgate.providers.base import Endpoint, Reply, Stream
from labgate.record import CLIENT_CLOSED, RequestRecord
from labgate.routing.attempts import attempt
from labgate.routing.balancer import plan
from labgate.routing.table import Deployment
from labgate.runtime import Runtime

Parser = Callable[[bytes], dict[str, Any]]


class Gateway:
    """Holds the current :class:`Runtime`; a reload swaps ``self.runtime``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def handle(self, record: RequestRecord, *, api_key: str | None, body: bytes,
                     parse: Parser) -> Reply | AsyncIterator[bytes]:
        """Serve one API call: a whole reply, or the stream of bytes to relay."""
        rt = self.runtime  # taken once: a reload never changes it under this request
        try:
            record.key_id = rt.auth.check(api_key)
            payload = parse(body)
            record.model, record.stream = payload["model"], payload.get("stream") is True
            route = rt.table.resolve(record.model)
            candidates = plan(route, rt.circuit, max_attempts=rt.max_attempts)
            result, dep = await attempt(
                candidates, endpoint=_endpoint(record), body=payload, stream=record.stream,
                deadline=time.monotonic() + rt.request_timeout, circuit=rt.circuit, record=record)
        except BaseException as exc:
            self.finish(rt, record, exc)
            raise
        if isinstance(result, Reply):
            record.usage, record.finish_reason = result.usage, result.finish_reason
            self.finish(rt, record)
            return result
        return self._relay(rt, result, dep, record)

    async def _relay(self, rt: Runtime, stream: Stream, dep: Deployment,
                     record: RequestRecord) -> AsyncIterator[bytes]:
        """Forward a stream chunk by chunk; the record is written when it ends, however it ends."""
        error: BaseException | None = None
        try:
            async for chunk in stream:
                if record.first_byte is None:
                    record.first_byte = time.perf_counter()
                yield chunk
        except BaseException as exc:
            error = exc
            raise
        finally:
            dep.health.inflight -= 1
            await stream.aclose()
            info = stream.info
            record.usage, record.finish_reason, record.first_token = info.usage, info.finish_reason, info.first_token
            self.finish(rt, record, error, streaming=True)

    @staticmethod
    def finish(rt: Runtime, record: RequestRecord, error: BaseException | None = None, *,
               streaming: bool = False) -> None:
        """Close the record with its outcome and hand it to telemetry."""
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
                    record.status = exc.status
                record.error_type, record.error_message = exc.code, exc.message
        rt.access_log.write(record)


def _endpoint(record: RequestRecord) -> Endpoint:
    return record.endpoint  # type: ignore[return-value]
