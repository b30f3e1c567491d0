"""The lifecycle in gateway.py: records are written once, however a request ends."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from labgate.errors import UpstreamConnectionError
from labgate.gateway import Gateway
from labgate.providers.base import Call, IteratorStream, Reply, StreamInfo, Usage
from labgate.record import RequestRecord
from labgate.runtime import Runtime
from labgate.server.openai import parse_chat
from labgate.server.sse import ErrorEventStream
from labgate.telemetry.logs import AccessLog
from labgate.testing.gateway import config_from

BODY = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})


class FakeAdapter:
    endpoints = frozenset({"chat"})

    def __init__(self, chunks: list[bytes | Exception]) -> None:
        self.chunks = chunks
        self.released = 0

    async def send(self, call: Call) -> Reply:
        return Reply(b"{}", Usage(1, 2), "stop")

    async def stream(self, call: Call) -> IteratorStream:
        info = StreamInfo(usage=Usage(3, 4), finish_reason="stop")

        async def gen() -> AsyncIterator[bytes]:
            for item in self.chunks:
                if isinstance(item, Exception):
                    raise item
                yield item

        async def release() -> None:
            self.released += 1

        return IteratorStream(gen(), info, release=release)

    async def aclose(self) -> None:
        pass


def gateway_with(adapter: FakeAdapter) -> tuple[Gateway, io.BytesIO]:
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9", "models": ["m"]}})
    log = io.BytesIO()
    runtime = Runtime.build(config, access_log=AccessLog(log))
    object.__setattr__(runtime, "adapters", {"p": adapter})
    runtime.table.deployments["p/m"].adapter = adapter
    return Gateway(runtime), log


def records(gateway: Gateway, log: io.BytesIO) -> list[dict[str, Any]]:
    gateway.runtime.access_log.flush()
    return [orjson.loads(line) for line in log.getvalue().splitlines()]


@pytest.mark.asyncio
async def test_stream_closed_before_its_first_chunk_is_still_recorded() -> None:
    adapter = FakeAdapter([b"data: 1\n\n"])
    gateway, log = gateway_with(adapter)
    stream = await gateway.handle(RequestRecord("r1", "chat"), api_key=None, body=BODY, parse=parse_chat)
    wrapped = ErrorEventStream(stream, lambda exc, rid: b"err", "r1")
    await wrapped.aclose()  # the client went away before anything was pulled
    [record] = records(gateway, log)
    assert (record["status"], record["outcome"], record["completion_tokens"]) == (499, "client_disconnected", 4)
    assert gateway.runtime.table.deployments["p/m"].health.inflight == 0
    assert adapter.released == 1
    await wrapped.aclose()  # idempotent: still one record
    assert len(records(gateway, log)) == 1


@pytest.mark.asyncio
async def test_stream_error_after_start_is_one_event_and_one_record() -> None:
    adapter = FakeAdapter([b"data: 1\n\n", UpstreamConnectionError("provider 'p' cut the stream")])
    gateway, log = gateway_with(adapter)
    stream = await gateway.handle(RequestRecord("r2", "chat"), api_key=None, body=BODY, parse=parse_chat)
    wrapped = ErrorEventStream(stream, lambda exc, rid: f"error:{exc.code}:{rid}".encode(), "r2")
    assert [chunk async for chunk in wrapped] == [b"data: 1\n\n", b"error:upstream_connection_error:r2"]
    await wrapped.aclose()
    [record] = records(gateway, log)
    assert (record["status"], record["outcome"], record["error_type"]) == (200, "stream_error",
                                                                          "upstream_connection_error")
    assert gateway.runtime.table.deployments["p/m"].health.inflight == 0
    assert adapter.released == 1


@pytest.mark.asyncio
async def test_complete_stream_records_usage_and_timing() -> None:
    adapter = FakeAdapter([b"data: 1\n\n", b"data: [DONE]\n\n"])
    gateway, log = gateway_with(adapter)
    stream = await gateway.handle(RequestRecord("r3", "chat"), api_key=None, body=BODY, parse=parse_chat)
    assert [chunk async for chunk in stream] == [b"data: 1\n\n", b"data: [DONE]\n\n"]
    await stream.aclose()
    [record] = records(gateway, log)
    assert (record["status"], record["outcome"], record["prompt_tokens"], record["completion_tokens"]) == (
        200, "ok", 3, 4)
    assert record["ttft_ms"] is not None and record["ttft_ms"] <= record["latency_ms"]
