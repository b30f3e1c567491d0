"""``labgate test-request`` against a running gateway in front of the simulator."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from labgate.cli.main import main
from labgate.server.serve import start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator, Status
from labgate.testing.gateway import LoopThread, config_from


class Sink:
    def write(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with Simulator(Behaviour(ttft_s=0.05, tokens_per_s=200, completion_tokens=10), models=["m1"]).run_in_thread() \
            as good, Simulator(Behaviour(fault=Status(503)), models=["m1"]).run_in_thread() as bad:
        config = config_from(
            {"good": {"type": "openai_compatible", "base_url": good.url + "/v1", "models": ["m1"]},
             "bad": {"type": "openai_compatible", "base_url": bad.url + "/v1", "models": ["m1"]}},
            {"routing": {"exact_matches": {"fb": {"provider": "bad", "model": "m1", "fallback_chain": ["good/m1"]}}}},
            {"resilience": {"circuit": {"failure_threshold": 1000}}})
        thread = LoopThread()
        running = thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(Sink())))
        try:
            yield f"http://127.0.0.1:{running.port}"
        finally:
            thread.run(running.stop(grace=1.0))
            thread.close()


def test_a_stream_shows_first_token_tokens_per_second_and_the_route(url: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-request", "--url", url, "--model", "fb", "--stream", "--json"]) == 0
    r = orjson.loads(capsys.readouterr().out)
    assert (r["status"], r["deployment"], r["provider"], r["attempts"], r["completion_tokens"]) == (
        200, "good/m1", "good", 2, 10)
    assert 0 < r["connect_ms"] <= r["first_byte_ms"] <= r["first_token_ms"] <= r["total_ms"]
    assert r["first_token_ms"] >= 50  # the simulator's time to first token
    assert 10 < r["tokens_per_s"] < 1000  # 10 tokens at 200/s, give or take the machine
    assert r["request_id"].startswith("req_")


def test_a_whole_answer_and_the_text_report(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-request", "--url", url, "--model", "good/m1"]) == 0
    out = capsys.readouterr().out
    assert "route         good/m1 (provider good, 1 attempt(s))" in out
    assert "first token   -" in out and "tokens        10 (" in out


def test_an_error_answer_exits_1_with_its_message(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-request", "--url", url, "--model", "nope", "--json"]) == 1
    r = orjson.loads(capsys.readouterr().out)
    assert r["status"] == 404 and "nope" in r["error"]


def test_an_unreachable_gateway_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-request", "--url", "http://127.0.0.1:1", "--timeout", "2"]) == 1
    assert "http://127.0.0.1:1" in capsys.readouterr().err
    assert main(["test-request", "--url", "ftp://x"]) == 1
