"""Stop and restart ``labgate serve`` under load, then count records against requests sent.

Eight client threads keep sending chat completions, each with its own
``x-request-id``, while the gateway (a real process) is stopped and started
again on the same port. A clean stop (SIGTERM) must lose nothing: every
request that got an answer is in the store exactly once, nothing is stored
that was not sent, and the only records without an answer are requests the
gateway took in just as it stopped. A crash (SIGKILL) may lose what was
queued: at most the last ``flush_interval_s`` (plus the batch being written).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from labgate.store import query, store_for
from labgate.testing import Simulator

KEY = "sk-restart-test-0123456789"
THREADS = 8
FLUSH_S = 0.2
BODY = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "count me"}]})


@pytest.fixture(scope="module")
def upstream() -> Iterator[Simulator]:
    with Simulator(models=["m1"], record=False).run_in_thread() as sim:
        yield sim


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(config: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``labgate serve`` as a process; yields once it listens; SIGTERMs it at the end if still running."""
    with log.open("ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--config", str(config),
                                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "LABGATE_RESTART_TEST_KEY": KEY})
    deadline = time.monotonic() + 20
    seen = log.stat().st_size if log.exists() else 0
    try:
        while not re.search(rf"listening on http://127\.0\.0\.1:{port}", log.read_text(errors="replace")[seen:]):
            assert proc.poll() is None, f"labgate exited early: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no listening line: {log.read_text()[-2000:]}"
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


@dataclass
class Load:
    """Client threads sending requests until stopped; what each request came to, by id."""

    port: int
    sent: list[str] = field(default_factory=list)
    answered: dict[str, tuple[int, float]] = field(default_factory=dict)  # id → (status, monotonic time)
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, worker: int) -> None:
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self.stop.is_set():
            rid = f"w{worker}-{n}"
            n += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                self.sent.append(rid)
                conn.request("POST", "/v1/chat/completions", BODY, {
                    "content-type": "application/json", "authorization": f"Bearer {KEY}", "x-request-id": rid})
                resp = conn.getresponse()
                resp.read()
                self.answered[rid] = (resp.status, time.monotonic())
            except (OSError, http.client.HTTPException):
                self.failed.append(rid)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.005)

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(20)


def config_dir(tmp_path: Path, upstream: Simulator, store_url: str) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "providers.yaml").write_text(
        f"providers:\n  sim:\n    type: openai_compatible\n    base_url: {upstream.url}/v1\n    models: [m1]\n")
    (directory / "gateway.yaml").write_text(
        "auth:\n  master_key_env: LABGATE_RESTART_TEST_KEY\nlogging:\n  requests: false\n"
        f"server:\n  shutdown_grace_s: 10\nstore:\n  url: \"{store_url}\"\n  flush_interval_s: {FLUSH_S}\n")
    return directory


def stored_ids(url: str) -> list[str]:
    async def read() -> list[str]:
        store = store_for(url)
        await store.open()
        try:
            return [r["client_request_id"] async for r in query.walk(store, query.Filter())]  # the ids sent
        finally:
            await store.aclose()

    return asyncio.run(read())


@pytest.mark.integration
def test_clean_restarts_under_load_lose_nothing(tmp_path: Path, upstream: Simulator, store_url: str) -> None:
    config, port, log = config_dir(tmp_path, upstream, store_url), free_port(), tmp_path / "serve.log"
    load = Load(port)
    with load.running():
        for _cycle in range(3):
            with serve(config, port, log) as proc:
                # under load by the work done, not the clock: 120 answers from this process first
                before = len(load.answered)
                _wait_for(lambda b=before: len(load.answered) >= b + 120, 60, "the load did not get going")
                proc.send_signal(signal.SIGTERM)  # under load: stop accepting, finish in flight, flush
                assert proc.wait(30) == 0
    ids = stored_ids(store_url)
    answered = set(load.answered)
    kind = "postgresql" if store_url.startswith("postgresql") else "sqlite"
    print(f"\nrestart under load ({kind}): sent {len(load.sent)}, answered {len(answered)}, "
          f"connection failures {len(load.failed)}, records {len(ids)}")
    assert len(answered) >= 360  # 3 × 120, each answered once
    assert {status for status, _ in load.answered.values()} == {200}
    assert len(ids) == len(set(ids)), "a record was written twice"
    assert answered <= set(ids), f"answered but not recorded: {sorted(answered - set(ids))[:10]}"
    assert set(ids) <= set(load.sent), "a record for a request nobody sent"
    # recorded without an answer: taken in just as the gateway stopped (≤ one per client per stop)
    assert len(set(ids) - answered) <= THREADS * 3
    assert "lost" not in log.read_text()


@pytest.mark.integration
def test_a_crash_loses_at_most_the_last_flush_interval(tmp_path: Path, upstream: Simulator, store_url: str) -> None:
    config, port, log = config_dir(tmp_path, upstream, store_url), free_port(), tmp_path / "serve.log"
    load = Load(port)
    with load.running():
        with serve(config, port, log) as proc:
            # bounds from the work, not the clock (a loaded machine answers fewer requests a second):
            # at least 150 answers, then past the flush interval (and one batch's write) after them
            _wait_for(lambda: len(load.answered) >= 150, 60, "the load did not get going")
            time.sleep(FLUSH_S + 1.0)
            proc.kill()  # SIGKILL: no flush
            killed = time.monotonic()
            proc.wait(10)
        with serve(config, port, log) as proc:  # the store is fine after a crash; the gateway serves on
            restarted = time.monotonic()
            _wait_for(lambda: any(at > restarted for _, at in list(load.answered.values())), 60,
                      "the restarted gateway answered nothing")
            time.sleep(0.5)
    ids = set(stored_ids(store_url))
    margin = FLUSH_S + 0.5  # the flush interval, plus time for one batch to be written
    old_enough = {rid for rid, (_, at) in load.answered.items() if at < killed - margin}
    after = {rid for rid, (_, at) in load.answered.items() if at > restarted}
    lost = set(load.answered) - ids
    kind = "postgresql" if store_url.startswith("postgresql") else "sqlite"
    print(f"\ncrash ({kind}): answered {len(load.answered)}, records {len(ids)}, lost {len(lost)}")
    assert len(old_enough) > 100 and after
    assert old_enough <= ids, f"lost more than the last flush interval: {sorted(old_enough - ids)[:10]}"
    assert after <= ids


def _wait_for(check: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)
