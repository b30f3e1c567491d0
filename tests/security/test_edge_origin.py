"""DNS rebinding and cross-site requests against a gateway with no master key (server/origin.py).

A real gateway on an ephemeral port, driven with raw HTTP so that ``Host`` and
``Origin`` are exactly what a browser (or an attacker's page) would send.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import pytest_asyncio

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio
KEY = "sk-edge-origin-test-0123456789"
CHAT = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]})
MESSAGES = orjson.dumps({"model": "m1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def send(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Answer:
    """One request over a fresh connection, headers exactly as given (no Host added)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "connection: close"]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        parsed[key] = f"{parsed[key]}, {value.strip()}" if key in parsed else value.strip()
    return Answer(int(status_line.split()[1]), parsed, payload)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(models=["m1"]) as simulator:
        yield simulator


async def serve(sim: Simulator, gateway: dict[str, Any] | None = None, *, host: str = "127.0.0.1") -> RunningGateway:
    provider = {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1"]}
    config = config_from({"sim": provider}, gateway={"logging": {"requests": False}, **(gateway or {})})
    return await start_gateway(config, host=host, port=0)


@pytest_asyncio.fixture
async def open_gateway(sim: Simulator) -> AsyncIterator[RunningGateway]:
    """The default: no master key, loopback, no CORS origins."""
    running = await serve(sim)
    try:
        yield running
    finally:
        await running.stop(grace=1.0)


# --- Host: DNS rebinding -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "localhost:4000", "LOCALHOST:1", "localhost.:4000", "127.0.0.1",
                                  "127.0.0.1:4000", "[::1]:4000", "[::1]", "[::ffff:127.0.0.1]:4000",
                                  "10.1.2.3:4000", "[2001:db8::1]:80"])
async def test_loopback_names_and_ip_literals_are_served(open_gateway: RunningGateway, sim: Simulator,
                                                         host: str) -> None:
    answer = await send(open_gateway.port, "POST", "/v1/chat/completions",
                        {"host": host, "content-type": "application/json"}, CHAT)
    assert answer.status == 200, answer.body


@pytest.mark.parametrize(("path", "method", "body"), [
    ("/v1/chat/completions", "POST", CHAT), ("/admin/history", "GET", b""), ("/admin/config", "GET", b""),
    ("/health", "GET", b""), ("/metrics", "GET", b""), ("/v1/models", "GET", b""), ("/nowhere", "GET", b""),
])
async def test_a_rebound_name_is_misdirected_on_every_surface(open_gateway: RunningGateway, sim: Simulator,
                                                              path: str, method: str, body: bytes) -> None:
    answer = await send(open_gateway.port, method, path,
                        {"host": "attacker.example:4000", "content-type": "text/plain"}, body)
    rid = answer.headers["x-request-id"]
    assert (answer.status, rid[:4]) == (421, "req_")
    assert answer.json() == {"error": {
        "message": "This gateway does not answer for the host 'attacker.example' (Host header). If that name is "
                   "yours, add it to server.allowed_hosts in gateway.yaml.",
        "type": "invalid_request_error", "param": None, "code": "host_not_allowed"}, "request_id": rid}
    assert answer.headers["x-should-retry"] == "false"
    assert sim.requests == []  # never reached the upstream


async def test_anthropic_clients_get_their_envelope(open_gateway: RunningGateway, sim: Simulator) -> None:
    answer = await send(open_gateway.port, "POST", "/v1/messages",
                        {"host": "rebind.attacker.example", "content-type": "application/json"}, MESSAGES)
    assert answer.status == 421
    assert answer.json() == {"type": "error", "request_id": answer.headers["request-id"], "error": {
        "type": "invalid_request_error",
        "message": "This gateway does not answer for the host 'rebind.attacker.example' (Host header). If that "
                   "name is yours, add it to server.allowed_hosts in gateway.yaml."}}
    assert sim.requests == []


@pytest.mark.parametrize("host", ["localhost:abc", "localhost:4000:1", "[::1", "127.0.0.1.attacker.example",
                                  "localhost.attacker.example", "xn--localhost", "*"])
async def test_look_alike_hosts_are_refused(open_gateway: RunningGateway, host: str) -> None:
    answer = await send(open_gateway.port, "GET", "/health", {"host": host})
    assert answer.status == 421


async def test_allowed_hosts_add_names_and_wildcards(sim: Simulator) -> None:
    running = await serve(sim, {"server": {"allowed_hosts": ["gateway.lab", "*.corp.example"]}})
    try:
        statuses = {host: (await send(running.port, "GET", "/health", {"host": host})).status
                    for host in ("gateway.lab:4000", "GATEWAY.LAB", "a.corp.example", "b.a.corp.example:1",
                                 "corp.example", "localhost", "evil.lab", "gateway.lab.evil")}
    finally:
        await running.stop(grace=1.0)
    assert statuses == {"gateway.lab:4000": 200, "GATEWAY.LAB": 200, "a.corp.example": 200,
                        "b.a.corp.example:1": 200, "corp.example": 421, "localhost": 200, "evil.lab": 421,
                        "gateway.lab.evil": 421}


async def test_a_star_turns_the_host_check_off(sim: Simulator) -> None:
    running = await serve(sim, {"server": {"allowed_hosts": ["*"]}})
    try:
        answer = await send(running.port, "GET", "/health", {"host": "anything.example"})
    finally:
        await running.stop(grace=1.0)
    assert answer.status == 200


async def test_with_a_master_key_any_host_is_served_unless_listed(sim: Simulator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_EDGE_KEY", KEY)
    auth = {"auth": {"master_key_env": "LABGATE_EDGE_KEY"}}
    keyed = await serve(sim, auth)
    listed = await serve(sim, {**auth, "server": {"allowed_hosts": ["gw.example"]}})
    try:
        open_answer = await send(keyed.port, "GET", "/health", {"host": "gw.example.net"})
        listed_answers = [(await send(listed.port, "GET", "/health", {"host": h})).status
                          for h in ("gw.example", "gw.example.net")]
    finally:
        await keyed.stop(grace=1.0)
        await listed.stop(grace=1.0)
    assert (open_answer.status, listed_answers) == (200, [200, 421])


async def test_the_listen_host_is_a_name_served(sim: Simulator) -> None:
    running = await serve(sim, host="localhost")
    try:
        answer = await send(running.port, "GET", "/health", {"host": f"localhost:{running.port}"})
    finally:
        await running.stop(grace=1.0)
    assert answer.status == 200


async def test_a_reload_applies_new_allowed_hosts(open_gateway: RunningGateway) -> None:
    from labgate.runtime import Runtime

    assert (await send(open_gateway.port, "GET", "/health", {"host": "gw.lab"})).status == 421
    old = open_gateway.gateway.runtime
    gateway = old.config.gateway.model_copy(update={"server": old.config.gateway.server.model_copy(
        update={"allowed_hosts": ["gw.lab"]})})
    open_gateway.gateway.runtime = Runtime.build(dataclasses.replace(old.config, gateway=gateway))
    try:
        assert (await send(open_gateway.port, "GET", "/health", {"host": "gw.lab"})).status == 200
    finally:
        await open_gateway.gateway.runtime.aclose()
        open_gateway.gateway.runtime = old


# --- Origin: cross-site requests -----------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:9999",
                                    "http://127.0.0.1.evil.example"])
async def test_a_cross_site_simple_request_never_reaches_the_upstream(open_gateway: RunningGateway,
                                                                     sim: Simulator, origin: str) -> None:
    # text/plain: a "simple" request, sent by the browser without a preflight
    answer = await send(open_gateway.port, "POST", "/v1/chat/completions",
                        {"host": f"127.0.0.1:{open_gateway.port}", "origin": origin,
                         "content-type": "text/plain"}, CHAT)
    rid = answer.headers["x-request-id"]
    assert answer.status == 403
    assert answer.json() == {"error": {
        "message": f"Browser requests from the origin {origin!r} are not allowed. If that page is yours, add it "
                   "to cors.allow_origins in gateway.yaml.",
        "type": "permission_error", "param": None, "code": "origin_not_allowed"}, "request_id": rid}
    assert "access-control-allow-origin" not in answer.headers
    assert sim.requests == []


@pytest.mark.parametrize("path", ["/admin/history", "/health", "/metrics", "/v1/models"])
async def test_a_foreign_origin_is_refused_on_every_surface(open_gateway: RunningGateway, path: str) -> None:
    answer = await send(open_gateway.port, "GET", path, {"host": "localhost", "origin": "https://evil.example"})
    assert (answer.status, answer.json()["error"]["code"]) == (403, "origin_not_allowed")


async def test_the_anthropic_surface_refuses_in_its_envelope(open_gateway: RunningGateway, sim: Simulator) -> None:
    answer = await send(open_gateway.port, "POST", "/v1/messages",
                        {"host": "localhost", "origin": "https://evil.example", "content-type": "text/plain"},
                        MESSAGES)
    assert answer.status == 403
    assert answer.json()["error"]["type"] == "permission_error" and answer.json()["type"] == "error"
    assert sim.requests == []


async def test_same_origin_and_originless_requests_are_served(open_gateway: RunningGateway) -> None:
    host = f"127.0.0.1:{open_gateway.port}"
    same = await send(open_gateway.port, "POST", "/v1/chat/completions",
                      {"host": host, "origin": f"http://{host}", "content-type": "application/json"}, CHAT)
    sdk = await send(open_gateway.port, "POST", "/v1/chat/completions",
                     {"host": host, "content-type": "application/json"}, CHAT)
    assert (same.status, sdk.status) == (200, 200)


async def test_a_listed_origin_gets_cors_headers_and_a_preflight(sim: Simulator) -> None:
    origin = "https://app.example"
    running = await serve(sim, {"cors": {"allow_origins": [origin, "https://*.lab.example"], "max_age_s": 120}})
    try:
        preflight = await send(running.port, "OPTIONS", "/v1/chat/completions", {
            "host": "localhost", "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-stainless-os"})
        actual = await send(running.port, "POST", "/v1/chat/completions",
                            {"host": "localhost", "origin": origin, "content-type": "application/json"}, CHAT)
        wildcard = await send(running.port, "GET", "/health", {"host": "localhost", "origin": "https://x.lab.example"})
        refused = await send(running.port, "OPTIONS", "/v1/chat/completions", {
            "host": "localhost", "origin": "https://evil.example", "access-control-request-method": "POST"})
    finally:
        await running.stop(grace=1.0)
    assert preflight.status == 204 and preflight.body == b""
    assert {k: v for k, v in preflight.headers.items() if k.startswith("access-control-") or k == "vary"} == {
        "access-control-allow-origin": origin, "vary": "Origin",
        "access-control-expose-headers": "x-request-id, x-client-request-id, request-id, x-labgate-provider, "
                                         "x-labgate-deployment, x-labgate-attempts, retry-after, x-should-retry, "
                                         "x-labgate-cost, x-labgate-routing, x-labgate-budget",
        "access-control-allow-methods": "GET, POST, OPTIONS", "access-control-max-age": "120",
        "access-control-allow-headers": "authorization, content-type, x-stainless-os"}
    assert actual.status == 200
    assert (actual.headers["access-control-allow-origin"], actual.headers["vary"]) == (origin, "Origin")
    assert "access-control-allow-credentials" not in actual.headers
    assert (wildcard.status, wildcard.headers["access-control-allow-origin"]) == (200, "https://x.lab.example")
    assert (refused.status, refused.json()["error"]["code"]) == (403, "origin_not_allowed")
    assert "access-control-allow-origin" not in refused.headers
    assert len(sim.requests) == 1  # the preflights never reached it


async def test_credentials_and_fixed_headers_when_configured(sim: Simulator) -> None:
    origin = "http://localhost:3000"
    running = await serve(sim, {"cors": {"allow_origins": [origin], "allow_credentials": True,
                                         "allow_headers": ["authorization", "content-type"],
                                         "allow_methods": ["POST"]}})
    try:
        preflight = await send(running.port, "OPTIONS", "/v1/embeddings", {
            "host": "localhost:4000", "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "x-other"})
    finally:
        await running.stop(grace=1.0)
    assert (preflight.status, preflight.headers["access-control-allow-credentials"],
            preflight.headers["access-control-allow-headers"], preflight.headers["access-control-allow-methods"]) == (
        204, "true", "authorization, content-type", "POST")


async def test_an_options_request_without_preflight_headers_is_routed(open_gateway: RunningGateway) -> None:
    answer = await send(open_gateway.port, "OPTIONS", "/v1/chat/completions", {"host": "localhost"})
    assert (answer.status, answer.headers["allow"]) == (405, "POST")


# --- what is refused at the edge is still recorded ---------------------------------------------------------------


async def test_edge_refusals_are_counted_and_logged(sim: Simulator) -> None:
    """A wrong Host, a foreign Origin, an unknown path and a wrong method never reach a surface, yet each
    is in the access log (with its request id and status) and in ``labgate_refused_requests_total``."""
    import io

    from labgate.telemetry.logs import AccessLog

    stream = io.BytesIO()
    provider = {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1"]}
    running = await start_gateway(config_from({"sim": provider}), host="127.0.0.1", port=0,
                                  access_log=AccessLog(stream))
    try:
        port = running.port
        answers = [
            await send(port, "POST", "/v1/chat/completions", {"host": "attacker.example"}, CHAT),
            await send(port, "POST", "/v1/chat/completions",
                       {"host": "127.0.0.1", "origin": "https://evil.example", "content-type": "text/plain"}, CHAT),
            await send(port, "GET", "/nowhere", {"host": "127.0.0.1"}),
            await send(port, "DELETE", "/v1/chat/completions", {"host": "127.0.0.1", "x-request-id": "mine-1"}),
        ]
        assert [a.status for a in answers] == [421, 403, 404, 405]
        scrape = await send(port, "GET", "/metrics", {"host": "127.0.0.1"})
        running.gateway.runtime.access_log.flush()
    finally:
        await running.stop(grace=1.0)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    refused = [line for line in lines if line.get("outcome") == "refused"]
    assert [(r["status"], r["error_type"], r["path"]) for r in refused] == [
        (421, "host_not_allowed", "/v1/chat/completions"), (403, "origin_not_allowed", "/v1/chat/completions"),
        (404, "not_found", "/nowhere"), (405, "method_not_allowed", "/v1/chat/completions")]
    assert [r["request_id"] for r in refused] == [a.headers["x-request-id"] for a in answers]
    assert refused[0]["host"] == "attacker.example" and refused[1]["origin"] == "https://evil.example"
    assert refused[3]["client_request_id"] == "mine-1" and refused[3]["client_ip"] == "127.0.0.1"
    text = scrape.body.decode()
    for code in ("host_not_allowed", "origin_not_allowed", "not_found", "method_not_allowed"):
        assert f'labgate_refused_requests_total{{code="{code}"}} 1' in text
    assert sim.requests == []
