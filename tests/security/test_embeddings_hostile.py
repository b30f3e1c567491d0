"""Hostile input to ``/v1/embeddings`` on a ``local_embeddings`` provider: always an answer or an envelope.

Never a 500, a traceback or a hang: every body gets 200 with vectors or a 4xx OpenAI envelope
carrying the request id.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("onnxruntime", reason="the [embeddings] extra is not installed: pip install -e '.[embeddings]'")

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing.gateway import LoopThread, config_from

HELPER = Path(__file__).resolve().parent.parent / "unit" / "providers" / "local_embeddings" / "bert.py"
MODEL = "bge-tiny"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    spec = importlib.util.spec_from_file_location("_labgate_test_bert", HELPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = module.load_helper().write_tiny_bert(tmp_path_factory.mktemp("w") / MODEL)
    providers = {"local": {"type": "local_embeddings", "models": [MODEL], "max_inputs": 16,
                           "weights": {MODEL: {"weights_dir": str(weights)}}}}
    thread = LoopThread()
    running = thread.run(start_gateway(config_from(providers, gateway={"store": {"capture": "none"}}),
                                       host="127.0.0.1", port=0))
    try:
        yield running
    finally:
        thread.run(running.stop(grace=2.0))
        thread.close()


def post(live: RunningGateway, body: bytes) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=110)  # a hang guard (the test's is 120 s)
    try:
        conn.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, orjson.loads(response.read())
    finally:
        conn.close()


def assert_answer_or_envelope(status: int, headers: dict[str, str], body: Any) -> None:
    if status == 200:  # 32 floats, or with encoding_format base64 their 128 little-endian float32 bytes
        assert body["object"] == "list" and body["data"]
        assert all(len(d["embedding"]) == 32 if isinstance(d["embedding"], list)
                   else len(base64.b64decode(d["embedding"], validate=True)) == 32 * 4 for d in body["data"])
        return
    assert 400 <= status < 500, body
    assert set(body) == {"error", "request_id"} and body["request_id"] == headers["x-request-id"]
    assert isinstance(body["error"]["message"], str) and body["error"]["type"] == "invalid_request_error"


TOKENS = st.integers(-(2**70), 2**70)
ITEMS = st.one_of(st.text(max_size=30), TOKENS, st.lists(TOKENS, max_size=5), st.none(), st.booleans(),
                  st.floats(allow_nan=False), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                  st.lists(st.text(max_size=5), max_size=3))
INPUTS = st.one_of(st.text(max_size=60), st.lists(ITEMS, max_size=20), TOKENS, st.none(), st.booleans())
EXTRAS = st.fixed_dictionaries({}, optional={
    "dimensions": st.one_of(st.integers(-5, 2**40), st.booleans(), st.text(max_size=3)),
    "encoding_format": st.sampled_from(["float", "base64", "binary", ""]),
    "user": st.one_of(st.text(max_size=5), st.integers()),
    "stream": st.booleans()})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(given_input=INPUTS, extras=EXTRAS)
def test_any_input_is_answered_or_refused_with_an_envelope(live: RunningGateway, given_input: Any,
                                                           extras: dict[str, Any]) -> None:
    body = json.dumps({"model": MODEL, "input": given_input, **extras}).encode()  # ints past 64 bits too
    assert_answer_or_envelope(*post(live, body))


@pytest.mark.parametrize("body", [
    b'{"model": "bge-tiny", "input": "\\ud800"}',  # a lone surrogate
    b'{"model": "bge-tiny", "input": ["a\\u0000b"]}',  # NUL inside a string
    b'{"model": "bge-tiny", "input": [[[1]]]}',
    b'{"model": "bge-tiny", "input": [' + b"[" * 200 + b"]" * 200 + b"]}",
    b'{"model": "bge-tiny", "input": [18446744073709551616]}',
    b'{"model": "bge-tiny", "input": "' + "é".encode() * 1000 + b'"}',
])
def test_odd_bodies(live: RunningGateway, body: bytes) -> None:
    assert_answer_or_envelope(*post(live, body))


def test_a_megabyte_input_is_refused_by_its_token_count(live: RunningGateway) -> None:
    status, _headers, body = post(live, orjson.dumps({"model": MODEL, "input": "the cat " * 250_000}))
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, "input_too_long", "input[0]")
    assert body["error"]["message"].startswith("'input[0]' is 500002 tokens long; bge-tiny takes at most 64")


def test_many_inputs_are_refused_before_any_work(live: RunningGateway) -> None:
    status, _, body = post(live, orjson.dumps({"model": MODEL, "input": ["x"] * 100_000}))
    assert (status, body["error"]["message"]) == (400, "'input' has 100000 items; at most 16 per request.")
