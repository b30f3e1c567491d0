"""``labgate serve`` and ``labgate demo`` as real processes: start, serve, stop on a signal."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from labgate.testing import Simulator
from labgate.testing.process import LISTENING, labgate, stop

KEY = "sk-test-master-key-1234567890"


@contextmanager
def process(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``labgate ARGS``; yield it and its URL once it listens; stop it with SIGTERM."""
    with labgate(*args, env=env, stdout=subprocess.PIPE) as gw:
        yield gw.proc, gw.url


def call(url: str, body: dict[str, Any] | None = None, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:  # a hang guard
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Simulator]:
    with Simulator(models=["m1"]).run_in_thread() as sim:
        yield sim


@pytest.fixture
def config_dir(tmp_path: Path, upstream: Simulator) -> Path:
    (tmp_path / "providers.yaml").write_text(
        f"providers:\n  sim:\n    type: openai_compatible\n    base_url: {upstream.url}/v1\n    models: [m1]\n")
    (tmp_path / "gateway.yaml").write_text("auth:\n  master_key_env: LABGATE_TEST_KEY\n")
    return tmp_path


def test_serve_auth_logs_and_clean_shutdown(config_dir: Path) -> None:
    with process("serve", "--config", str(config_dir), "--port", "0", env={"LABGATE_TEST_KEY": KEY}) as (proc, url):
        assert call(url + "/health")[0] == 200  # health needs no key
        status, body = call(url + "/v1/chat/completions", CHAT)
        assert (status, body["error"]["type"]) == (401, "authentication_error")
        status, body = call(url + "/v1/chat/completions", CHAT, key=KEY)
        assert status == 200 and body["choices"][0]["message"]["content"] == " sim1 sim2 sim3 sim4 sim5 sim6 sim7 sim8"
        assert stop((proc,)) == [0]  # SIGTERM; a hang past 30 s fails with the child's stacks
        out = proc.stdout.read() if proc.stdout else b""
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["status"], r["model"]) for r in lines] == [(401, None), (200, "m1")]
    assert KEY.encode() not in out
    assert lines[1]["key_id"].startswith("key-") and lines[1]["completion_tokens"] == 8


def test_serve_with_two_workers(config_dir: Path, each_worker: Any) -> None:
    with process("serve", "--config", str(config_dir), "--port", "0", "--workers", "2",
                 env={"LABGATE_TEST_KEY": KEY}) as (proc, url):
        statuses = [call(url + "/v1/chat/completions", CHAT, key=KEY)[0] for _ in range(20)]
        assert statuses == [200] * 20
        workers = each_worker(url, 2, parent=proc.pid, key=KEY)  # two distinct children answered
        assert stop((proc,)) == [0]  # SIGTERM; a hang past 30 s fails with the child's stacks
    for pid in workers:  # and the parent waited for both
        assert not Path(f"/proc/{pid}").exists()


def test_readiness_fails_during_the_sigterm_drain(config_dir: Path) -> None:
    """SIGTERM: /health/readiness answers 503 for server.drain_delay_s (load balancers stop sending),
    while it still serves (the end of the drain: test_serve_auth_logs_and_clean_shutdown)."""
    (config_dir / "gateway.yaml").write_text("auth:\n  master_key_env: LABGATE_TEST_KEY\n"
                                             "server:\n  drain_delay_s: 30\n")
    with process("serve", "--config", str(config_dir), "--port", "0", env={"LABGATE_TEST_KEY": KEY}) as (proc, url):
        assert call(url + "/health/readiness") == (200, {"status": "ready", "models": 1})
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while (answer := call(url + "/health/readiness"))[0] == 200:  # until the signal is handled
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert answer == (503, {"status": "not_ready", "reason": "shutting down"})
        assert call(url + "/health/liveness") == (200, {"status": "alive"})  # draining, not dead
        status, body = call(url + "/v1/chat/completions", CHAT, key=KEY)  # still served meanwhile
        assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
        proc.send_signal(signal.SIGKILL)  # the 30 s delay is not waited out
        proc.wait(30)


def test_coverage_measures_forked_workers(config_dir: Path, tmp_path: Path, each_worker: Any) -> None:
    """`make coverage` sees the workers' code: they end with os._exit, which [tool.coverage.run]'s
    `_exit` patch turns into a save (each worker writes its own data file, named by its pid)."""
    data = tmp_path / "cov" / "data"
    data.parent.mkdir()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "coverage", "run", f"--rcfile={root / 'pyproject.toml'}",
                             "-m", "labgate", "serve", "--config", str(config_dir), "--port", "0", "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root,
                            env={**os.environ, "LABGATE_TEST_KEY": KEY, "COVERAGE_FILE": str(data)})
    assert proc.stderr is not None
    try:
        seen = b""
        while (match := LISTENING.search(seen.decode(errors="replace"))) is None:
            line = proc.stderr.readline()
            assert line, f"labgate under coverage exited early: {seen.decode()}"
            seen += line
        workers = each_worker(match.group(1), 2, parent=proc.pid, key=KEY)
    finally:  # stopped whatever happened (a failed check must not leave the server and its workers behind)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0
    written = {int(m.group(1)) for f in data.parent.iterdir() if (m := re.search(r"\.pid(\d+)\.", f.name))}
    assert set(workers) <= written, f"no coverage data from workers {set(workers) - written}"
    subprocess.run([sys.executable, "-m", "coverage", "combine", "-q", f"--rcfile={root / 'pyproject.toml'}"],
                   cwd=root, env={**os.environ, "COVERAGE_FILE": str(data)}, check=True)
    import coverage

    measured = coverage.CoverageData(basename=str(data))
    measured.read()
    serve_py = next(f for f in measured.measured_files() if f.endswith("labgate/cli/serve.py"))
    source = Path(serve_py).read_text().splitlines()
    only_in_workers = source.index(
        '    print("labgate: shutting down; letting in-flight requests finish", file=sys.stderr, flush=True)') + 1
    assert only_in_workers in set(measured.lines(serve_py) or ())


def test_invalid_config_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text("providers:\n  x:\n    type: olama\n")
    result = subprocess.run([sys.executable, "-m", "labgate", "serve", "--config", str(tmp_path)],
                            capture_output=True, timeout=20)
    assert result.returncode == 1
    assert b"unknown provider type 'olama'" in result.stderr and b"did you mean `ollama`" in result.stderr


# `labgate serve` with discovery pointed at the test's own ports instead of the machine's standard ones
# (an engine someone runs on 11434 or 8080 must not change the test): the engines table is replaced in
# the child before the command runs
DISCOVERING = """
import sys
from labgate.cli.main import main
from labgate.config import defaults
engines = (defaults.Engine("ollama", "ollama", int(sys.argv[1])), defaults.Engine("llama_cpp", "llama_cpp",
           int(sys.argv[2])))
defaults.discover.__defaults__ = ("127.0.0.1", engines)
defaults.describe.__defaults__ = (engines,)
sys.exit(main(["serve", "--port", "0"]))
"""


def test_default_config_says_what_it_found(upstream: Simulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    proc = subprocess.Popen([sys.executable, "-c", DISCOVERING, str(closed), str(upstream.port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # stacks if it hangs at stop
    assert proc.stderr is not None
    banner: list[str] = []
    try:
        while not (banner and LISTENING.search(banner[-1])):
            line = proc.stderr.readline().decode()
            assert line, f"labgate exited early: {banner}"
            banner.append(line.rstrip("\n"))
        url = LISTENING.search(banner[-1]).group(1)  # type: ignore[union-attr]
        status, body = call(url + "/v1/models")
        assert status == 200 and [m["id"] for m in body["data"] if m["id"] == "m1"] == ["m1"]
        status, body = call(url + "/v1/chat/completions", CHAT)  # the found engine serves
        assert status == 200 and body["choices"][0]["message"]["content"] == " sim1 sim2 sim3 sim4 sim5 sim6 sim7 sim8"
    finally:
        assert stop((proc,)) == [0]
    start = banner.index("labgate: no --config given; using the built-in default (local engine discovery).")
    assert banner[start + 1:start + 3] == [
        f"  - ollama          port {closed:<6} not found",
        f"  + llama_cpp       port {upstream.port:<6} llama_cpp: m1"]
    assert "  To add providers or cloud APIs, write a config directory (see examples/) and run: " \
           "labgate serve --config DIR" in banner
    assert not any("No local engine answered" in line for line in banner)


def test_demo_serves_every_endpoint() -> None:
    with process("demo", "--port", "0", "--tokens-per-s", "0") as (_proc, url):
        status, body = call(url + "/v1/chat/completions", {**CHAT, "model": "default"})
        assert status == 200 and body["model"] == "sim-llama"
        status, body = call(url + "/v1/chat/completions", {**CHAT, "model": "sim-claude"})
        assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
        status, body = call(url + "/v1/embeddings", {"model": "sim-embed", "input": "hi"})
        assert status == 200 and len(body["data"][0]["embedding"]) == 16
        status, body = call(url + "/v1/completions", {"model": "sim-llama", "prompt": "hi"})
        assert status == 200 and body["object"] == "text_completion"
        ids = [m["id"] for m in call(url + "/v1/models")[1]["data"]]
        assert ids == ["sim-llama", "sim-coder", "sim-embed", "sim-claude", "default"]
