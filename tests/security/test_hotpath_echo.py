"""The hot path's shortcuts keep every answer's protections and headers.

The app skips the Host/Origin check when nothing restricts hosts and no ``Origin`` is sent, and names
the client's ``x-request-id`` once, only when sent. The bug these guard against: an answer from the
route table (404 unknown path, 405 wrong method) named the client's id twice (``x-client-request-id``
appeared two times), since both the error renderer and the app appended it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

KEY = "sk-hotpath-echo-test-0123456789"
Served = tuple[RunningGateway, aiohttp.ClientSession]


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv("LABGATE_HOTPATH_ECHO_KEY", KEY)
    async with Simulator(models=["m1"]) as sim, aiohttp.ClientSession() as http:
        provider = {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1"]}
        config = config_from({"sim": provider},
                             gateway={"auth": {"master_key_env": "LABGATE_HOTPATH_ECHO_KEY"},
                                      "store": {"url": str(tmp_path / "h.db")}, "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            yield running, http
        finally:
            await running.stop(grace=1.0)


async def call(served: Served, method: str, path: str, headers: dict[str, str],
               body: Any = None) -> tuple[int, aiohttp.typedefs.CIMultiDictProxy[str]]:
    running, http = served
    sent = {"authorization": f"Bearer {KEY}", **headers}
    async with http.request(method, running.url + path, json=body, headers=sent) as r:
        await r.read()
        return r.status, r.headers


CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/v1/chat/completions", CHAT, 200),
    ("POST", "/v1/no-such-route", CHAT, 404),
    ("GET", "/v1/chat/completions", None, 405),
    ("POST", "/v1/messages/no-such", CHAT, 404),
])
async def test_the_clients_id_is_named_exactly_once(served: Served, method: str, path: str, body: Any,
                                                    status: int) -> None:
    got, headers = await call(served, method, path, {"x-request-id": "mine-9"}, body)
    assert got == status
    assert headers.getall("x-client-request-id") == ["mine-9"]
    assert len(headers.getall("x-request-id")) == 1
    got, headers = await call(served, method, path, {}, body)  # none sent: none echoed
    assert got == status and "x-client-request-id" not in headers


@pytest.mark.asyncio
async def test_an_origin_is_checked_even_when_any_host_is_answered(served: Served) -> None:
    # a master key with no server.allowed_hosts answers any Host: the Origin check alone remains
    status, headers = await call(served, "POST", "/v1/chat/completions",
                                 {"origin": "https://evil.example", "x-request-id": "mine-3"}, CHAT)
    assert status == 403 and headers.getall("x-client-request-id") == ["mine-3"]
    running, _ = served
    own = running.url.removesuffix("/")
    status, headers = await call(served, "POST", "/v1/chat/completions", {"origin": own}, CHAT)
    assert status == 200 and headers["access-control-allow-origin"] == own


@pytest.mark.asyncio
async def test_an_unusual_model_name_still_goes_out_encoded(served: Served) -> None:
    # the printable-ASCII fast path of the route headers; anything else is still percent-encoded
    status, headers = await call(served, "POST", "/v1/chat/completions", {},
                                 {**CHAT, "model": "sim/caf\u00e9"})
    assert (headers["x-labgate-provider"], headers["x-labgate-deployment"]) == ("sim", "sim/caf%C3%A9"), status
