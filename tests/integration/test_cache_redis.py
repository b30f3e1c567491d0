"""The response cache on a real Redis: shared entries, namespaces, TTL, flush, Redis going away and back.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); skips with the reason when Redis cannot be
reached, which ``LABGATE_REQUIRE_INTEGRATION=1`` (CI) turns into a failure. Every test writes
under its own namespaces. The outage test runs its own throwaway ``redis-server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.cli.main import main as cli
from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from
from labgate.testing.process import labgate

pytestmark = pytest.mark.integration
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CHAT = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "what is a cache?"}]}


def _ping(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()



def _ns() -> str:
    return "t" + uuid.uuid4().hex[:12]


@asynccontextmanager
async def gateway(sim: Simulator, cache: dict[str, Any], state: dict[str, Any] | None = None) -> AsyncIterator[
        RunningGateway]:
    providers = {"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}}
    config = config_from(providers, None, {"cache": cache, "state": state or {}, "store": {"capture": "none"},
                                           "logging": {"requests": False}})
    running = await start_gateway(config, host="127.0.0.1", port=0)
    try:
        yield running
    finally:
        await running.stop(grace=1)


async def post(client: aiohttp.ClientSession, gw: RunningGateway, body: dict[str, Any]) -> tuple[int, str, bytes]:
    async with client.post(gw.url + "/v1/chat/completions", data=orjson.dumps(body)) as r:
        content = await r.read()
        status, cache = r.status, r.headers.get("x-labgate-cache", "")
    if gw.gateway.runtime.cache is not None:
        await gw.gateway.runtime.cache.drain()
    return status, cache, content


def calls(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.method == "POST")


@asynccontextmanager
async def setup() -> AsyncIterator[tuple[Simulator, aiohttp.ClientSession]]:
    async with Simulator(Behaviour(tokens_per_s=0), models=["m"]) as sim, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield sim, client


async def _flush(url: str, namespace: str) -> None:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"labgate:{namespace}:*"):
            await client.unlink(key)
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_two_gateways_share_entries_and_namespaces_isolate(redis_url: str) -> None:
    shared, other = _ns(), _ns()
    async with setup() as (sim, client), gateway(sim, {"url": redis_url, "namespace": shared}) as a, \
                gateway(sim, {"url": redis_url, "namespace": shared}) as b, \
                gateway(sim, {"url": redis_url, "namespace": other}) as c:
        status, first, miss = await post(client, a, CHAT)
        assert (status, first) == (200, "miss")
        status, second, hit = await post(client, b, CHAT)  # another gateway: the entry is in Redis
        assert (status, second) == (200, "hit")
        assert hit == miss
        assert calls(sim) == 1
        assert (await post(client, c, CHAT))[1] == "miss"  # another namespace sees nothing
        assert calls(sim) == 2
    await _flush(redis_url, shared)
    await _flush(redis_url, other)


@pytest.mark.asyncio
async def test_ttl_expiry(redis_url: str) -> None:
    ns = _ns()
    async with setup() as (sim, client), gateway(sim, {"url": redis_url, "namespace": ns, "ttl_s": 0.5}) as gw:
        assert (await post(client, gw, CHAT))[1] == "miss"
        assert (await post(client, gw, CHAT))[1] == "hit"
        await asyncio.sleep(0.7)
        assert (await post(client, gw, CHAT))[1] == "miss"
        # a request's own ttl wins over the configured one
        body = {**CHAT, "messages": [{"role": "user", "content": "short"}], "cache": {"ttl": 0.3}}
        assert (await post(client, gw, body))[1] == "miss"
        await asyncio.sleep(0.5)
        assert (await post(client, gw, body))[1] == "miss"
    await _flush(redis_url, ns)


@pytest.mark.asyncio
async def test_flush_by_namespace_leaves_the_other_intact(redis_url: str) -> None:
    keep, gone = _ns(), _ns()
    async with setup() as (sim, client), gateway(sim, {"url": redis_url, "namespace": keep}) as a, \
                gateway(sim, {"url": redis_url, "namespace": gone}) as b:
        await post(client, a, CHAT)
        await post(client, b, CHAT)
        await post(client, b, {**CHAT, "max_tokens": 3})
        async with client.get(b.url + f"/admin/cache/keys?namespace={gone}") as r:
            assert r.status == 200
            assert len((await r.json())["data"]) == 2
        async with client.post(b.url + f"/admin/cache/flush?namespace={gone}") as r:
            assert (r.status, await r.json()) == (200, {"deleted": 2, "namespace": gone})
        async with client.get(a.url + "/admin/cache/stats") as r:
            stats = await r.json()
        assert stats["namespaces"][keep]["entries"] == 1
        assert stats["namespaces"][keep]["misses"] == 1
        assert gone not in stats["namespaces"] or stats["namespaces"][gone]["entries"] == 0
        assert (await post(client, a, CHAT))[1] == "hit"
        assert (await post(client, b, CHAT))[1] == "miss"
    await _flush(redis_url, keep)
    await _flush(redis_url, gone)


def test_cli_on_redis_directly(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import redis

    ns, other = _ns(), _ns()
    client = redis.Redis.from_url(redis_url)
    try:
        for i in range(3):
            client.set(f"labgate:{ns}:{i:032x}", b"{}\n{}", px=60_000)
        client.set(f"labgate:{other}:{0:032x}", b"{}\n{}", px=60_000)
        client.set(f"labgate:{ns}:not-a-cache-key", b"x", px=60_000)  # other state under labgate: is never touched
        assert cli(["cache", "keys", "--redis", redis_url, "--namespace", ns, "--json"]) == 0
        listed = orjson.loads(capsys.readouterr().out)
        assert sorted(k["key"] for k in listed) == [f"labgate:{ns}:{i:032x}" for i in range(3)]
        assert all(0 < k["ttl_s"] <= 60 and k["bytes"] == 5 for k in listed)
        assert cli(["cache", "stats", "--redis", redis_url, "--json"]) == 0
        stats = orjson.loads(capsys.readouterr().out)
        assert stats["namespaces"][ns] == {"entries": 3, "bytes": 15}
        assert cli(["cache", "flush", "--redis", redis_url, "--namespace", ns, "--yes"]) == 0
        assert "flushed 3 entries" in capsys.readouterr().out
        assert client.exists(f"labgate:{other}:{0:032x}") == 1
        assert client.exists(f"labgate:{ns}:not-a-cache-key") == 1
    finally:
        for key in client.scan_iter(match=f"labgate:{ns}:*"):
            client.unlink(key)
        for key in client.scan_iter(match=f"labgate:{other}:*"):
            client.unlink(key)
        client.close()


# --- Redis going away and coming back ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_redis() -> Iterator[tuple[int, Any]]:
    """Our own redis-server (never the shared one): yields its port and a restart/stop controller."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (needed to stop and restart Redis mid-test)")
    port = _free_port()

    class Server:
        proc: subprocess.Popen[bytes] | None = None

        def start(self) -> None:
            self.proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    _ping(f"redis://127.0.0.1:{port}/0")
                    return
                except Exception:
                    time.sleep(0.05)
            raise RuntimeError("the throwaway redis-server did not start")

        def stop(self) -> None:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait(10)
                self.proc = None

    server = Server()
    server.start()
    try:
        yield port, server
    finally:
        server.stop()


@pytest.mark.asyncio
@pytest.mark.timeout(180)  # a Redis stopped and started again: slow on a loaded machine, bounded by its steps
async def test_redis_stopped_and_restarted_mid_test_fails_open(redis_url: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with throwaway_redis() as (port, server):
        url = f"redis://127.0.0.1:{port}/0"
        async with setup() as (sim, client), \
                gateway(sim, {"namespace": "outage"}, {"url": url, "retry_s": 0.3, "timeout_s": 0.5}) as gw:
            assert (await post(client, gw, CHAT))[1] == "miss"
            assert (await post(client, gw, CHAT))[1] == "hit"
            server.stop()
            caplog.clear()
            for _ in range(3):  # served without the cache, logged once
                status, cache, _ = await post(client, gw, CHAT)
                assert (status, cache) == (200, "off")
            outage_logs = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(outage_logs) == 1
            async with client.get(gw.url + "/metrics") as r:
                metrics = await r.text()
            assert 'labgate_cache_requests_total{result="unavailable"} 3' in metrics
            async with client.get(gw.url + "/admin/cache/stats") as r:
                assert r.status == 503
                assert (await r.json())["error"]["code"] == "cache_unavailable"
            server.start()  # same port, empty
            await asyncio.sleep(0.4)  # past retry_s: the next request tries Redis again
            assert (await post(client, gw, CHAT))[1] == "miss"
            assert (await post(client, gw, CHAT))[1] == "hit"
            assert calls(sim) == 5


# --- two `labgate serve` processes -------------------------------------------------------------



@contextmanager
def serve_process(config: Path) -> Iterator[str]:
    """``labgate serve --config DIR --port 0`` in its own process; yields its URL."""
    with labgate("serve", "--config", str(config), "--port", "0") as gw:
        yield gw.url


def chat(url: str, body: dict[str, Any]) -> tuple[str, bytes]:
    request = urllib.request.Request(url + "/v1/chat/completions", data=orjson.dumps(body), method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.headers["x-labgate-cache"], r.read()


def test_two_gateway_processes_share_entries(redis_url: str, tmp_path: Path) -> None:
    ns = _ns()
    with Simulator(Behaviour(tokens_per_s=0), models=["m"]).run_in_thread() as sim:
        (tmp_path / "providers.yaml").write_text(
            f"providers:\n  p:\n    type: openai_compatible\n    base_url: {sim.url}/v1\n    models: [m]\n")
        (tmp_path / "gateway.yaml").write_text(
            f"state:\n  url: {redis_url}\ncache:\n  namespace: {ns}\nstore:\n  capture: none\n"
            "logging:\n  requests: false\n")
        try:
            with serve_process(tmp_path) as first, serve_process(tmp_path) as second:
                status, miss = chat(first, CHAT)
                assert status == "miss"
                deadline = time.monotonic() + 30  # the first process stores in the background
                while (answer := chat(second, CHAT))[0] != "hit":
                    assert time.monotonic() < deadline, "the second process never saw the entry"
                    time.sleep(0.05)
                assert answer[1] == miss
                assert chat(first, {**CHAT, "stream": True})[0] == "hit"
                assert sum(1 for r in sim.requests if r.method == "POST") == 1
        finally:
            asyncio.run(_flush(redis_url, ns))


@pytest.mark.asyncio
async def test_more_concurrent_commands_than_connections_wait_their_turn(redis_url: str) -> None:
    from labgate.state.redis import RedisEntries, RedisLink

    key = f"labgate:{_ns()}:" + "a" * 32
    entries = RedisEntries(RedisLink(redis_url, timeout_s=2.0, retry_s=1.0, max_connections=2))
    try:
        await entries.put(key, b"value", 60)
        answers = await asyncio.gather(*(entries.get(key) for _ in range(50)))
        assert answers == [b"value"] * 50
        status = entries.status()
        assert (status["busy"], status["failures"], entries.link._open) == (0, 0, 2)
    finally:
        await entries.link.client.delete(key)
        await entries.aclose()


SLOW_IMPORT = """
import sys, time

class _SlowRedis:  # importing redis-py as slowly as a loaded machine does
    def find_spec(self, name, path=None, target=None):
        if name == "redis.asyncio":
            env = __import__("os").environ
            time.sleep(float(env["LABGATE_TEST_SLOW_IMPORT_S"]))
            open(env["LABGATE_TEST_IMPORTED_MARK"], "w").close()  # the (slow) import is done
        return None

sys.meta_path.insert(0, _SlowRedis())
"""


def test_a_redis_cache_gateway_answers_as_soon_as_its_port_accepts(tmp_path: Path) -> None:
    """``labgate serve`` imports the Redis client before it listens, not after.

    The cache bench's hit-redis leg served 0 requests on a loaded machine: the port accepted while
    the Runtime was still importing redis-py (seconds under load), so the warm-up's requests waited
    unanswered until wrk gave up, and were then recorded as 499 cache misses.
    """
    pytest.importorskip("redis", reason="the redis client is not installed: pip install 'labgate[redis]'")
    slow_s = 3.0
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_IMPORT)
    config = tmp_path / "config"
    config.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (config / "providers.yaml").write_text(
        "providers:\n  up:\n    type: openai_compatible\n    base_url: http://127.0.0.1:9/v1\n    models: [m]\n")
    (config / "gateway.yaml").write_text(
        f"server:\n  host: 127.0.0.1\n  port: {port}\nauth:\n  master_key_env: LABGATE_TEST_KEY\n"
        f"state:\n  url: {os.environ.get('REDIS_URL', DEFAULT_REDIS_URL)}\n"
        f"cache:\n  backend: redis\n  namespace: t{uuid.uuid4().hex[:12]}\n")
    mark = tmp_path / "redis-imported"
    env = {**os.environ, "LABGATE_TEST_KEY": "sk-test-preload", "LABGATE_TEST_SLOW_IMPORT_S": str(slow_s),
           "LABGATE_TEST_IMPORTED_MARK": str(mark),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(tmp_path / "site"), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:  # what a TCP readiness check (and the bench's harness) waits for
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert time.monotonic() < deadline, "the gateway never listened"
            time.sleep(0.02)
        # by order, not by the clock: the import (slowed by slow_s) was over before the port accepted
        assert mark.exists(), "the port accepted while redis-py was still being imported"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveness", timeout=30) as answer:
            assert answer.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
