"""Values that reach headers and records: model names checked at the edge, header values encoded safely,
and the record holding the status the client got.

The bug: a model ``provider/<anything>`` with CR/LF or text outside Latin-1
became ``x-labgate-deployment``; writing that head failed, so the client got a
500 while the access log, metrics and history said 502 (or 200).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from labgate.server.envelopes import header_value
from labgate.server.fields import MAX_MODEL_CHARS
from labgate.server.http import Response
from labgate.server.respond import HeadRenderer
from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator, Status
from labgate.testing.gateway import config_from
from labgate.testing.web import serving

HOSTILE = ["sim/a\r\nx-injected: 1", "sim/a\nb", "sim/\x00", "sim/\x1b[31mred", "sim/tab\tname", "sim/\u2028",
           "sim/\u202eevil", "sim/\x85", "x" * (MAX_MODEL_CHARS + 1)]


async def post(port: int, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
    """A raw HTTP/1.1 POST; the head is parsed by hand so that nothing is normalised away."""
    data = orjson.dumps(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST %b HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nconnection: close\r\n"
                 b"content-length: %d\r\n\r\n%b" % (path.encode(), len(data), data))
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status.split()[1]), headers, orjson.loads(payload)


class Served:
    def __init__(self, running: RunningGateway, log: io.BytesIO) -> None:
        self.running, self.log = running, log

    async def records(self) -> list[dict[str, Any]]:
        self.running.gateway.runtime.access_log.flush()
        return [orjson.loads(line) for line in self.log.getvalue().splitlines()]


async def serve(base_url: str, models: list[str]) -> Served:
    log = io.BytesIO()
    config = config_from({"sim": {"type": "openai_compatible", "base_url": base_url, "models": models}})
    running = await start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(log))
    return Served(running, log)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(models=["m1", "模型"]) as simulator:
        yield simulator


@pytest_asyncio.fixture
async def served(sim: Simulator) -> AsyncIterator[Served]:
    out = await serve(sim.url + "/v1", ["m1", "模型"])
    try:
        yield out
    finally:
        await out.running.stop(grace=1.0)


# --- model names: one check at the edge, both surfaces ---------------------------------------------------


@pytest.mark.parametrize("model", HOSTILE)
@pytest.mark.asyncio
async def test_a_hostile_model_name_is_a_400_on_the_openai_surface(served: Served, sim: Simulator,
                                                                    model: str) -> None:
    status, headers, body = await post(served.running.port, "/v1/chat/completions",
                                       {"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert (status, body["error"]["type"], body["error"]["param"], body["request_id"]) == (
        400, "invalid_request_error", "model", headers["x-request-id"])
    assert "x-injected" not in headers and sim.requests == []
    (record,) = await served.records()
    assert (record["status"], record["error_type"]) == (400, "invalid_request")


@pytest.mark.parametrize("model", HOSTILE)
@pytest.mark.asyncio
async def test_a_hostile_model_name_is_a_400_on_the_anthropic_surface(served: Served, sim: Simulator,
                                                                       model: str) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, headers, body = await post(served.running.port, path, {
            "model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        assert (status, body["type"], body["error"]["type"], headers["request-id"]) == (
            400, "error", "invalid_request_error", body["request_id"]), path
        assert body["error"]["message"].startswith("model: Input must ")
    assert sim.requests == []


@pytest.mark.asyncio
async def test_the_400_names_the_character_and_the_limit(served: Served) -> None:
    _, _, body = await post(served.running.port, "/v1/chat/completions",
                            {"model": "sim/a\r\nb", "messages": [{"role": "user", "content": "hi"}]})
    assert body["error"]["message"] == "'model' must hold only printable characters; got '\\r' at position 5."
    _, _, body = await post(served.running.port, "/v1/chat/completions",
                            {"model": "m" * 300, "messages": [{"role": "user", "content": "hi"}]})
    assert body["error"]["message"] == f"'model' must be at most {MAX_MODEL_CHARS} characters; got 300."


# --- headers: any value goes out, encoded; the record says what the client got ---------------------------


@pytest.mark.asyncio
async def test_a_non_latin1_deployment_name_is_encoded_and_served(served: Served) -> None:
    # "sim/模型" passes the model check (printable) and reaches x-labgate-deployment; it used to be a 500
    status, headers, body = await post(served.running.port, "/v1/chat/completions",
                                       {"model": "sim/模型", "messages": [{"role": "user", "content": "hi"}]})
    assert (status, headers["x-labgate-deployment"], headers["x-labgate-provider"]) == (
        200, "sim/%E6%A8%A1%E5%9E%8B", "sim")
    assert body["object"] == "chat.completion"
    (record,) = await served.records()
    assert (record["status"], record["deployment"]) == (200, "sim/模型")


@pytest.mark.asyncio
async def test_a_failed_non_latin1_deployment_is_the_502_it_is_recorded_as(served: Served) -> None:
    status, headers, body = await post(served.running.port, "/v1/chat/completions",
                                       {"model": "sim/未知", "messages": [{"role": "user", "content": "hi"}]})
    assert (status, headers["x-labgate-deployment"], body["error"]["code"]) == (
        502, "sim/%E6%9C%AA%E7%9F%A5", "all_deployments_rejected")  # the simulator's 404: no such model
    (record,) = await served.records()
    assert record["status"] == 502


@given(st.text(max_size=200))
def test_every_header_value_can_be_written(value: str) -> None:
    encoded = header_value(value)
    assert encoded.isascii() and encoded.isprintable()
    head, *_ = HeadRenderer().render(Response(200, [("x-labgate-deployment", encoded)]), send_body=True,
                                     close=False, http10=False)
    assert head.count(b"\r\n") == 5  # status line, our header, date, content-length, the blank line
    assert head.split(b"\r\n")[1] == b"x-labgate-deployment: " + encoded.encode()


@pytest.mark.parametrize(("value", "encoded"), [
    ("openai/gpt-4o", "openai/gpt-4o"), ("a b", "a b"), ("a\r\nx: y", "a%0D%0Ax: y"), ("模型", "%E6%A8%A1%E5%9E%8B"),
    ("50%模", "50%25%E6%A8%A1"), ("50%", "50%"), ("\x00", "%00"), ("\ud800", "\\ud800"),
])
def test_header_values_are_percent_encoded_only_when_needed(value: str, encoded: str) -> None:
    assert header_value(value) == encoded


@pytest.mark.asyncio
async def test_an_overloaded_anthropic_answer_is_recorded_as_the_529_sent(served: Served, sim: Simulator) -> None:
    sim.set(Behaviour(fault=Status(503)))
    status, headers, body = await post(served.running.port, "/v1/messages",
                                       {"model": "m1", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})
    assert (status, body["error"]["type"]) == (529, "overloaded_error")
    (record,) = await served.records()
    assert (record["request_id"], record["status"]) == (headers["x-request-id"], 529)


@pytest.mark.asyncio
async def test_a_reply_that_cannot_be_translated_is_recorded_as_the_502_sent() -> None:
    # an OpenAI-compatible upstream answering 200 with a body that is no chat completion
    async def bad(request: web.Request) -> web.Response:
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", bad)
    async with serving(app) as url:
        served = await serve(f"{url}/v1", ["m1"])
        try:
            status, _, body = await post(served.running.port, "/v1/messages", {
                "model": "m1", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})
            records = await served.records()
        finally:
            await served.running.stop(grace=1.0)
    assert (status, body["error"]["type"]) == (502, "api_error")
    assert "without a message" in body["error"]["message"]
    (record,) = records
    assert (record["status"], record["outcome"], record["error_type"]) == (502, "error", "upstream_bad_response")
