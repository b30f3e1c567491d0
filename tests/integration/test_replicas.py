"""Replicas on one real Redis and one real PostgreSQL (server/replicas.py, docs/scaling.md).

Three ``labgate serve`` processes (or one ``labgate serve --workers 3``: the same suite, run both ways)
under load from the official ``openai`` SDK:

- a deployment that fails on one replica has its circuit opened on all of them;
- an admin API reload on one replica reaches all three within 2 s with zero failed requests, and a
  replica whose own files are invalid keeps its config and says so (readiness detail, metric);
- one replica SIGKILLed mid-load: the survivors keep serving and every answered request is in the
  history (the killed one's last ``store.send_interval_s`` aside, counted);
- Redis restarted mid-run: the replicas serve through it and share circuits again afterwards.

Budgets and rpm limits across three replicas: tests/integration/test_limits_replicas.py.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from labgate.testing import Behaviour, Simulator
from labgate.testing.process import Fleet, free_port

pytestmark = pytest.mark.integration
SEND_INTERVAL_S = 0.2  # store.send_interval_s: what a SIGKILL may lose of the killed replica's history
SYNC_S = 0.5  # state.sync_interval_s


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with Simulator(Behaviour(completion_tokens=3), models=["m", "n", "n2", "n3"]).run_in_thread() as sim:
        yield sim


DEAD = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here: every replica's files name the same


def write_config(directory: Path, sim: Simulator, *, redis_url: str, pg_url: str | None, cluster: str,
                 models: tuple[str, ...] = ("m", "n"), invalid: bool = False) -> None:
    """Model ``m`` goes to ``flaky`` (nothing listens there) first, then to ``good`` (the simulator)."""
    directory.mkdir(parents=True, exist_ok=True)
    dead = DEAD
    providers = {"providers": {
        "flaky": {"type": "openai_compatible", "base_url": dead, "models": ["m"], "timeout_s": 5},
        "good": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": list(models)}}}
    mappings = {"routing": {"exact_matches": {"m": {"provider": "flaky", "fallback_chain": ["good"]}}}}
    if invalid:
        mappings["routing"]["exact_matches"]["n"] = {"provider": "no-such-provider"}
    gateway: dict[str, Any] = {
        "state": {"url": redis_url, "cluster": cluster, "sync_interval_s": SYNC_S, "timeout_s": 1.0,
                  "retry_s": 0.5},
        "logging": {"requests": False},
        "resilience": {"circuit": {"failure_threshold": 1, "cooldown_s": 120}, "max_attempts": 2},
        "config": {"backup": False}}
    if pg_url is not None:
        gateway["store"] = {"url": pg_url, "capture": "metadata", "send_interval_s": SEND_INTERVAL_S}
    (directory / "providers.yaml").write_text(yaml.safe_dump(providers))
    (directory / "model-mappings.yaml").write_text(yaml.safe_dump(mappings))
    (directory / "gateway.yaml").write_text(yaml.safe_dump(gateway))


@dataclass
class Cluster(Fleet):
    """The gateways under test: ``urls`` to address each one (workers: the one shared port)."""

    configs: list[Path] = field(default_factory=list)
    workers: bool = False

    def stop(self, timeout_s: float = 60.0) -> None:
        super().stop(timeout_s)


def start(tmp_path: Path, sim: Simulator, *, redis_url: str, pg_url: str | None, workers: bool,
          count: int = 3) -> Cluster:
    cluster = "t" + uuid.uuid4().hex[:12]
    configs = [tmp_path / f"config{i}" for i in range(1 if workers else count)]
    for directory in configs:
        write_config(directory, sim, redis_url=redis_url, pg_url=pg_url, cluster=cluster)
    extra = ["--workers", str(count)] if workers else []
    fleet = Fleet.start(configs, [tmp_path / f"gateway{i}.log" for i in range(len(configs))], *extra)
    running = Cluster(fleet.procs, fleet.urls, fleet.logs, configs, workers)
    urls = running.urls
    try:
        running.wait_live(60)
        # every replica (worker) has joined the cluster's list
        _wait(lambda: len(admin(urls[0])["cluster"]["replicas"]) == count, 20,
              f"the replicas did not all report in: {admin(urls[0])['cluster']}")
    except BaseException:
        running.stop()
        raise
    return running


def _wait(check: Any, timeout: float, message: str, step: float = 0.05) -> float:
    """Poll ``check`` until it holds; how long that took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(message)
        time.sleep(step)
    return time.monotonic() - started


def admin(url: str, path: str = "/admin/config") -> Any:
    with httpx.Client(timeout=10) as client:  # a fresh connection: under --workers, any worker answers
        response = client.get(url + path)
    assert response.status_code == 200, response.text
    return response.json()


def redis_down(cluster: Cluster) -> None:
    """Wait until the replicas say Redis is unavailable."""
    _wait(lambda: not admin(cluster.urls[0])["cluster"]["redis"]["up"], 20, "the replica did not notice")


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


def ask(url: str, model: str = "m") -> Any:
    return sdk(url).chat.completions.with_raw_response.create(
        model=model, max_tokens=3, messages=[{"role": "user", "content": "hello"}])


@dataclass
class Load:
    """Threads that keep sending chat requests with the openai SDK, round robin over ``urls``."""

    urls: list[str]
    threads: int = 3
    answered: list[tuple[str, str, float]] = field(default_factory=list)  # (url, request id, time)
    failed: list[tuple[str, str, float]] = field(default_factory=list)  # (url, error, time)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for i in range(self.threads):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def _run(self, i: int) -> None:
        clients = [sdk(url) for url in self.urls]
        n = i
        while not self._stop.is_set():
            url, client = self.urls[n % len(self.urls)], clients[n % len(self.urls)]
            n += 1
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="n", max_tokens=3, messages=[{"role": "user", "content": f"load {n}"}])
                raw.parse()
                self.answered.append((url, raw.headers["x-request-id"], time.time()))
            except openai.APIError as exc:
                self.failed.append((url, f"{type(exc).__name__}: {exc}", time.time()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(60)


@pytest.mark.parametrize("workers", [False, True], ids=["replicas", "workers"])
def test_circuit_and_config_reach_every_replica(tmp_path: Path, simulator: Simulator, redis_url: str,
                                                workers: bool) -> None:
    cluster = start(tmp_path, simulator, redis_url=redis_url, pg_url=None, workers=workers)
    try:
        # the flaky deployment fails once on one replica (threshold 1): its circuit opens there
        first = ask(cluster.urls[0])
        assert first.headers["x-labgate-attempts"] == "2" and first.headers["x-labgate-deployment"] == "good/m"
        time.sleep(SYNC_S * 2 + 0.2)  # within a second every replica knows
        for i in range(12):  # every replica (fresh connections: every worker) now skips flaky at once
            raw = ask(cluster.urls[i % len(cluster.urls)])
            assert (raw.headers["x-labgate-attempts"], raw.headers["x-labgate-deployment"]) == ("1", "good/m"), i
        adopted = sum(float(line.split()[-1]) for url in cluster.urls
                      for line in httpx.get(url + "/metrics").text.splitlines()
                      if line.startswith("labgate_circuits_adopted_total"))
        assert adopted == 2  # the two others learnt it from Redis, not by failing themselves

        # a config change (model "n2" added) applied on one replica reaches all, under load, no failure
        before = admin(cluster.urls[0])["version"]
        for directory in cluster.configs:
            write_config(directory, simulator, redis_url=redis_url, pg_url=None,
                         cluster=admin(cluster.urls[0])["cluster"]["name"], models=("m", "n", "n2"))
        with Load(cluster.urls) as load:
            time.sleep(0.5)
            reloaded = httpx.post(cluster.urls[0] + "/admin/config/reload", timeout=30)
            assert reloaded.status_code == 200, reloaded.text
            after = reloaded.json()["version"]
            assert after != before
            took = _wait(lambda: all(m["version"] == after and m["sync"] == "in_sync"
                                     for m in admin(cluster.urls[0])["cluster"]["replicas"]), 10,
                         f"not every replica reloaded: {admin(cluster.urls[0])['cluster']}")
            time.sleep(0.5)
        assert took < 2.0, took
        assert load.failed == [] and len(load.answered) > 0
        for i in range(6):
            assert ask(cluster.urls[i % len(cluster.urls)], "n2").http_response.status_code == 200

        if not workers:  # a replica whose own files are invalid keeps serving what it has and says so
            name = admin(cluster.urls[0])["cluster"]["name"]
            for i, directory in enumerate(cluster.configs):
                write_config(directory, simulator, redis_url=redis_url, pg_url=None, cluster=name,
                             models=("m", "n", "n3"), invalid=i == 2)
            reloaded = httpx.post(cluster.urls[0] + "/admin/config/reload", timeout=30)
            assert reloaded.status_code == 200, reloaded.text
            newest = reloaded.json()["version"]
            _wait(lambda: httpx.get(cluster.urls[2] + "/health/readiness").json().get("config") is not None, 10,
                  "the replica with invalid files did not report the rejection")
            ready = httpx.get(cluster.urls[2] + "/health/readiness")
            assert ready.status_code == 200  # it still serves: the previous config
            detail = ready.json()["config"]
            assert (detail["status"], detail["version"], detail["serving"]) == ("rejected", newest, after)
            assert "no-such-provider" in str(detail["errors"])
            assert "labgate_config_sync_rejected 1" in httpx.get(cluster.urls[2] + "/metrics").text
            assert admin(cluster.urls[2])["version"] == after
            _wait(lambda: admin(cluster.urls[1])["version"] == newest, 5, "replica 1 did not reload")
            assert "labgate_config_sync_rejected 0" in httpx.get(cluster.urls[1] + "/metrics").text
            # `labgate reload --all` names the replica that refused, and fails
            (cluster.configs[0] / "model-mappings.yaml").write_text(
                (cluster.configs[0] / "model-mappings.yaml").read_text() + "# touched\n")
            cli = subprocess.run([sys.executable, "-m", "labgate", "reload", "--config", str(cluster.configs[0]),
                                  "--url", cluster.urls[0], "--all", "--force", "--no-test-requests",
                                  "--timeout", "10"], capture_output=True, text=True, timeout=120, check=False)
            replica2 = admin(cluster.urls[2])["cluster"]["replica"]
            assert cli.returncode == 1 and f"replica(s) {replica2} refused" in cli.stdout, cli.stdout + cli.stderr
            # fixed files on replica 2: `labgate reload --all` succeeds and every replica runs the config
            write_config(cluster.configs[2], simulator, redis_url=redis_url, pg_url=None, cluster=name,
                         models=("m", "n", "n3"))
            shutil.copy(cluster.configs[0] / "model-mappings.yaml", cluster.configs[2] / "model-mappings.yaml")
            (cluster.configs[1] / "model-mappings.yaml").write_text(
                (cluster.configs[0] / "model-mappings.yaml").read_text() + "# again\n")
            for directory in cluster.configs[::2]:
                shutil.copy(cluster.configs[1] / "model-mappings.yaml", directory / "model-mappings.yaml")
            cli = subprocess.run([sys.executable, "-m", "labgate", "reload", "--config", str(cluster.configs[0]),
                                  "--url", cluster.urls[0], "--all", "--force", "--no-test-requests",
                                  "--timeout", "10"], capture_output=True, text=True, timeout=120, check=False)
            assert cli.returncode == 0 and "ok: all 3 replica(s) run" in cli.stdout, cli.stdout + cli.stderr
    finally:
        cluster.stop()


def test_a_replica_killed_mid_load(tmp_path: Path, simulator: Simulator, redis_url: str, pg_url: str) -> None:
    import asyncpg

    cluster = start(tmp_path, simulator, redis_url=redis_url, pg_url=pg_url, workers=False)
    killed_at = 0.0
    try:
        with Load(cluster.urls, threads=4) as load:
            time.sleep(1.5)
            cluster.procs[2].send_signal(signal.SIGKILL)
            killed_at = time.time()
            cluster.procs[2].wait(10)
            time.sleep(1.5)
    finally:
        cluster.stop()
    survivors = [(u, rid, t) for u, rid, t in load.answered if u != cluster.urls[2]]
    after_kill = [t for u, _, t in survivors if t > killed_at]
    assert len(after_kill) > 0  # the survivors kept serving
    assert all(u == cluster.urls[2] for u, _, _ in load.failed), load.failed[:5]  # only the dead one failed

    async def recorded() -> set[str]:
        base, schema = pg_url.split("?")[0], pg_url.split("search_path=")[1]
        conn = await asyncpg.connect(base, server_settings={"search_path": schema})
        try:
            return {r["request_id"] for r in await conn.fetch("SELECT request_id FROM requests")}
        finally:
            await conn.close()

    history = asyncio.run(recorded())
    missing_survivors = [rid for _, rid, _ in survivors if rid not in history]
    assert missing_survivors == []
    lost = [t for u, rid, t in load.answered if u == cluster.urls[2] and rid not in history]
    # what the killed replica had answered but not yet sent to the history writer: its last interval
    assert all(t >= killed_at - SEND_INTERVAL_S - 0.5 for t in lost), (len(lost), killed_at, lost[:3])
    print(f"killed replica: {sum(u == cluster.urls[2] for u, _, _ in load.answered)} answered, "
          f"{len(lost)} not in history; survivors: {len(survivors)} answered, all recorded")


def test_redis_restarted_mid_run(tmp_path: Path, simulator: Simulator, redis_url: str) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (needed to stop and restart Redis mid-test)")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    def redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _pings(port), 10, "the throwaway redis-server did not start")
        return proc

    server = redis()
    cluster = None
    try:
        cluster = start(tmp_path, simulator, redis_url=url, pg_url=None, workers=False, count=2)
        server.kill()
        server.wait(10)
        redis_down(cluster)
        for i in range(4):  # Redis down: both serve; circuits are per replica meanwhile
            assert ask(cluster.urls[i % 2], "n").http_response.status_code == 200
        raw = ask(cluster.urls[0])  # flaky fails on replica 0 and opens its circuit there
        assert raw.headers["x-labgate-attempts"] == "2"
        server = redis()  # back, empty: no restart of the gateways
        _wait(lambda: admin(cluster.urls[1])["cluster"]["redis"]["up"], 20, "replica 1 did not reconnect")
        # what opened while Redis was down was written when it came back: replica 1 adopts it
        _wait(lambda: admin(cluster.urls[1])["cluster"]["circuits_adopted"] >= 1, 10,
              "replica 1 never learnt of the circuit that opened while Redis was down")
        raw = ask(cluster.urls[1])
        assert (raw.headers["x-labgate-attempts"], raw.headers["x-labgate-deployment"]) == ("1", "good/m")
        # both replicas re-register in the empty Redis on their next sync (each at its own pace)
        _wait(lambda: len(admin(cluster.urls[0])["cluster"]["replicas"]) == 2, 10,
              "the replicas did not both re-register after Redis came back")
    finally:
        if cluster is not None:
            cluster.stop()
        server.kill()
        server.wait(10)


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False

