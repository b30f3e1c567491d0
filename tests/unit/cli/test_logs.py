"""``labgate logs tail|analyze`` and slow-request logging, against a recorded log with known answers."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from labgate.cli.main import main
from labgate.errors import AttemptFailure, UpstreamStatusError
from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.telemetry.logs import AccessLog, JsonFormatter


def line(rid: str, latency: float, *, model: str = "m1", provider: str | None = "good", outcome: str = "ok",
         status: int = 200, stream: bool = False, ttft: float | None = None, tokens: tuple[int, int] | None = (3, 5),
         error: str | None = None, failed: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"request_id": rid, "client_request_id": None, "ts": 1764230400.0, "endpoint": "chat", "model": model,
            "stream": stream, "provider": provider, "deployment": provider and f"{provider}/{model}",
            "status": status, "outcome": outcome, "latency_ms": latency, "ttft_ms": ttft if ttft else latency,
            "prompt_tokens": tokens and tokens[0], "completion_tokens": tokens and tokens[1],
            "finish_reason": "stop" if outcome == "ok" else None, "attempts": 1 + len(failed or []),
            "failed_attempts": failed, "error_type": error, "error": error and f"{error} happened",
            "key_id": None, "client_ip": "127.0.0.1", "trace_id": None}


FAILED = [{"deployment": "flaky/m1", "error": "upstream_server_error", "message": "503"}]
RECORDS = [
    line("r1", 10.0), line("r2", 20.0), line("r3", 30.0), line("r4", 40.0),
    line("r5", 100.0, failed=FAILED),  # recovered by a fallback
    line("r6", 5.0, model="m2", stream=True, ttft=2.0, tokens=(1, 9)),
    line("r7", 7.0, model="m2", stream=True, ttft=4.0, outcome="stream_error", error="upstream_connection_error"),
    line("r8", 1.0, model="nope", provider=None, outcome="error", status=404, tokens=None, error="model_not_found"),
    line("r9", 900.0, outcome="error", status=502, tokens=None, error="all_attempts_failed",
         failed=[*FAILED, {"deployment": "good/m1", "error": "upstream_timeout", "message": "slow"}]),
]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "requests.log"
    path.write_bytes(b"labgate: listening on http://127.0.0.1:4000 (1 worker)\n"
                     + b"".join(orjson.dumps(r) + b"\n" for r in RECORDS[:5]) + b"{not json\n[1, 2]\n\n"
                     + b"".join(orjson.dumps(r) + b"\n" for r in RECORDS[5:]))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_analyze_reports_known_answers(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "logs", "analyze", str(log_file), "--json")
    assert code == 0
    assert orjson.loads(out) == {
        "requests": 9, "ok": 6, "skipped_lines": 3,
        "outcomes": {"error": 2, "ok": 6, "stream_error": 1},
        "errors_by_cause": {"all_attempts_failed": 1, "model_not_found": 1, "upstream_connection_error": 1},
        "failed_attempts": {"flaky/m1: upstream_server_error": 2, "good/m1: upstream_timeout": 1},
        "latency_ms": {
            "all": {"count": 9, "mean": 123.667, "p50": 20.0, "p90": 900.0, "p95": 900.0, "p99": 900.0,
                    "max": 900.0},
            "m1": {"count": 6, "mean": 183.333, "p50": 30.0, "p90": 900.0, "p95": 900.0, "p99": 900.0,
                   "max": 900.0},
            "m2": {"count": 2, "mean": 6.0, "p50": 5.0, "p90": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0},
            "nope": {"count": 1, "mean": 1.0, "p50": 1.0, "p90": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0}},
        "ttft_ms": {"count": 2, "mean": 3.0, "p50": 2.0, "p90": 4.0, "p95": 4.0, "p99": 4.0, "max": 4.0},
        "slowest": [{"request_id": r, "model": m, "latency_ms": ms} for r, m, ms in (
            ("r9", "m1", 900.0), ("r5", "m1", 100.0), ("r4", "m1", 40.0), ("r3", "m1", 30.0), ("r2", "m1", 20.0),
            ("r1", "m1", 10.0), ("r7", "m2", 7.0), ("r6", "m2", 5.0), ("r8", "nope", 1.0))],
        "usage": {"m1 @ good": {"requests": 6, "prompt_tokens": 15, "completion_tokens": 25},
                  "m2 @ good": {"requests": 2, "prompt_tokens": 4, "completion_tokens": 14},
                  "nope @ None": {"requests": 1, "prompt_tokens": 0, "completion_tokens": 0}},
    }


def test_analyze_filters_and_prints_a_table(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "logs", "analyze", str(log_file), "--model", "m1", "--errors")
    assert code == 0
    assert out.splitlines()[0] == "1 requests, 0 ok (3 other lines skipped)"
    assert "  all_attempts_failed" in out.replace("     1", "")
    assert "m1 @ good" in out


def test_analyze_reads_stdin(log_file: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "labgate", "logs", "analyze", "-", "--json", "--slow", "40"],
                            input=log_file.read_bytes(), capture_output=True, timeout=30)
    assert result.returncode == 0
    report = orjson.loads(result.stdout)
    assert [s["request_id"] for s in report["slowest"]] == ["r9", "r5", "r4"]


def test_a_missing_file_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "analyze", str(tmp_path / "absent.log")]) == 1
    assert "absent.log" in capsys.readouterr().err
    assert main(["logs", "tail", str(tmp_path / "absent.log"), "--no-follow"]) == 1


def test_tail_filters_and_prints_pretty_or_json(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "logs", "tail", str(log_file), "--no-follow", "--lines", "100", "--errors", "--json")
    assert code == 0
    assert [orjson.loads(x)["request_id"] for x in out.splitlines()] == ["r7", "r8", "r9"]
    code, out = run(capsys, "logs", "tail", str(log_file), "--no-follow", "--lines", "100", "--model", "m2")
    lines = out.splitlines()
    assert len(lines) == 2
    assert "200  m2 → good/m2  5 ms  first token 2 ms  1+9 tok" in lines[0]
    assert "upstream_connection_error: upstream_connection_error happened" in lines[1]
    code, out = run(capsys, "logs", "tail", str(log_file), "--no-follow", "--lines", "100", "--slow", "100")
    assert [x.split("  ")[2] for x in out.splitlines()] == ["m1 → good/m1", "m1 → good/m1"]
    assert "2 attempts" in out.splitlines()[0]


def test_tail_follows_lines_appended_later(log_file: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "labgate", "logs", "tail", str(log_file), "--lines", "1",
                             "--json"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert orjson.loads(proc.stdout.readline())["request_id"] == "r9"  # the last line: tail is running
        with log_file.open("ab") as f:
            f.write(orjson.dumps(line("late", 3.0))[:20])  # half a line first: not printed until whole
            f.flush()
            time.sleep(0.5)
            f.write(orjson.dumps(line("late", 3.0))[20:] + b"\n")
        assert orjson.loads(proc.stdout.readline())["request_id"] == "late"
    finally:
        proc.terminate()
        proc.wait(5)


def test_a_hostile_log_value_is_escaped_in_pretty_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(orjson.dumps(line("r", 1.0, model="m\x1b[2J\nfake", outcome="error", error="e\x07")) + b"\n")
    _, out = run(capsys, "logs", "tail", str(path), "--no-follow")
    assert "\x1b" not in out and out.count("\n") == 1 and "\\x1b" in out


# --- slow-request logging ---------------------------------------------------------------------


def record(seconds: float) -> RequestRecord:
    r = RequestRecord("req_slow", "chat", started=100.0)
    r.model, r.deployment, r.attempts, r.stream = "m1", "good/m1", 2, True
    r.first_byte, r.first_token, r.finished = 100.5, 101.0, 100.0 + seconds
    r.usage = Usage(3, 40)
    r.failures = [AttemptFailure("flaky/m1", UpstreamStatusError("down", upstream_status=503))]
    return r


class Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        pass


def test_a_request_over_the_threshold_is_logged_at_warning_with_its_breakdown(
        caplog: pytest.LogCaptureFixture) -> None:
    log = AccessLog(Sink(), enabled=False, slow_ms=2000)
    with caplog.at_level(logging.WARNING, logger="labgate.requests"):
        log.write(record(1.999))  # under the threshold
        log.write(record(3.0))
    (entry,) = caplog.records
    assert entry.getMessage() == "slow request req_slow: 3000.0 ms (good/m1, 2 attempt(s), first token 1000.0 ms)"
    assert entry.request == {  # type: ignore[attr-defined]
        "request_id": "req_slow", "model": "m1", "deployment": "good/m1", "status": 200, "outcome": "ok",
        "stream": True, "latency_ms": 3000.0, "ttft_ms": 1000.0, "attempts": 2,
        "failed_attempts": ["flaky/m1: upstream_server_error"], "completion_tokens": 40, "tokens_per_s": 20.0,
        "trace_id": None}
    assert orjson.loads(JsonFormatter().format(entry))["request"]["tokens_per_s"] == 20.0


def test_no_threshold_means_no_slow_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="labgate.requests"):
        AccessLog(Sink(), slow_ms=None).write(record(1000.0))
    assert caplog.records == []


def test_the_default_threshold_is_30_seconds() -> None:
    from labgate.config.schema.gateway import LoggingConfig

    assert LoggingConfig().slow_request_ms == 30_000.0
