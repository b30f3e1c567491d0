"""An export that fails midway must not look complete: the connection closes without the last chunk."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from labgate.server import admin_history
from labgate.server.serve import start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio
KEY = "sk-admin-export-test-0123456789"


@contextmanager
def captured(name: str) -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


async def failing_export(store: Any, where: Any, fmt: str) -> AsyncIterator[bytes]:
    yield b'{"request_id": "r0"}\n'
    yield b'{"request_id": "r1"}\n'
    raise OSError("disk I/O error")


async def test_an_export_that_fails_midway_closes_without_the_last_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_EXPORT_TEST_KEY", KEY)
    monkeypatch.setattr(admin_history, "export", failing_export)
    async with Simulator(models=["m1"]) as sim:
        provider = {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1"]}
        config = config_from({"sim": provider},
                             gateway={"auth": {"master_key_env": "LABGATE_EXPORT_TEST_KEY"},
                                      "store": {"url": str(tmp_path / "h.db")}, "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            with captured("labgate.server") as records:
                host, port = running.url.removeprefix("http://").rsplit(":", 1)
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(f"GET /admin/history/export HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n"
                             "x-request-id: exp-1\r\n\r\n".encode())
                raw = await asyncio.wait_for(reader.read(-1), 5)  # read until the server closes
                writer.close()
                async with aiohttp.ClientSession() as http, http.get(
                        running.url + "/admin/history/export", headers={"authorization": f"Bearer {KEY}"}) as response:
                    assert response.status == 200
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await response.read()
        finally:
            await running.stop(grace=1.0)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    request_id = next(line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"x-request-id: "))  # labgate's own id, not the client's
    assert b"transfer-encoding: chunked" in head.lower()
    # both rows went out, then the connection closed: no zero-size chunk ends the body
    assert body == b'15\r\n{"request_id": "r0"}\n\r\n15\r\n{"request_id": "r1"}\n\r\n'
    failures = [r for r in records if r.levelno >= logging.ERROR]
    assert len(failures) == 2  # one per export request: logged once each
    first = failures[0]
    assert first.exc_info is not None
    error = first.exc_info[1]
    assert (type(error).__name__, str(error), repr(error.__cause__)) == (
        "HistoryUnavailableError", f"history export failed midway (request {request_id})", "OSError('disk I/O error')")
