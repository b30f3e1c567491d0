"""Fixtures for the contract suite: provider simulators and real gateways, each on its own thread.

Everything listens on an ephemeral port and runs on an event loop in a
daemon thread, so the synchronous SDK clients work as well as the async ones.
The simulators and the shared gateway live for the whole session; the
function-scoped fixtures below hand them to one test and undo what it did.

- ``sims``: three simulators. ``sims.openai`` speaks the OpenAI dialect for
  every OpenAI-compatible provider type, ``sims.anthropic`` the Anthropic
  one; both require a key. ``sims.backup`` is the fallback deployment of
  every ``fb-<type>`` route and always answers ``sims.backup_reply``.
  Recorded requests are forgotten before each test.
- ``faults``: sets behaviours and faults on the simulators for one test;
  each is restored when the test ends.
- ``gateway``: the shared gateway, with auth on (``gateway.key``). For each
  adapter type ``t`` there is a provider named ``t`` serving ``m-<t>`` (no
  fallback) and the route ``fb-<t>`` → ``t/m-<t>`` then ``backup/m-backup``.
  Its circuit state is reset after each test.
- ``make_gateway``: a gateway of the test's own config (deadline, circuit,
  load), stopped when the test ends.
"""

from __future__ import annotations

import contextlib
import io
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from labgate.routing.table import Deployment
from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Fault, Received, Simulator
from labgate.testing.gateway import LoopThread, config_from

# every adapter type the shared gateway has a provider of (test_scenarios checks it against the registry)
ADAPTER_TYPES = ("openai_compatible", "openai", "vllm", "llama_cpp", "ollama", "lmstudio", "anthropic")
MASTER_KEY = "sk-labgate-contract"
MASTER_KEY_ENV = "LABGATE_CONTRACT_MASTER_KEY"
OPENAI_KEY = "sk-sim-openai"  # what the OpenAI-dialect simulator requires
ANTHROPIC_KEY = "sk-ant-sim"  # what the Anthropic simulator requires
KEY_ENV = {"openai": "LABGATE_CONTRACT_OPENAI_KEY", "anthropic": "LABGATE_CONTRACT_ANTHROPIC_KEY"}
PROVIDER_TIMEOUT_S = 0.25  # timeout_s of the shared gateway's providers: what a hanging upstream costs
BACKUP_REPLY = "from the backup"
MAX_BODY_BYTES = 256 * 1024


class Captured(io.BytesIO):
    """An access-log stream the tests read back."""

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.getvalue().splitlines()]


@dataclass(frozen=True, slots=True)
class Sims:
    """The simulators, and the config entries that point providers at them."""

    openai: Simulator
    anthropic: Simulator
    backup: Simulator
    openai_key: str = OPENAI_KEY
    anthropic_key: str = ANTHROPIC_KEY
    backup_reply: str = BACKUP_REPLY

    def of(self, adapter_type: str) -> Simulator:
        """The simulator a provider of this type talks to."""
        return self.anthropic if adapter_type == "anthropic" else self.openai

    def received(self, model: str) -> list[Received]:
        """Every request for ``model`` that reached a simulator since the test began."""
        return [r for sim in (self.openai, self.anthropic, self.backup) for r in sim.requests
                if isinstance(r.body, dict) and r.body.get("model") == model]

    def bodies(self, model: str) -> list[Any]:
        """The JSON bodies of :meth:`received`."""
        return [r.body for r in self.received(model)]

    def provider(self, adapter_type: str, *, timeout_s: float = PROVIDER_TIMEOUT_S,
                 models: list[Any] | None = None) -> dict[str, Any]:
        """A ``providers.yaml`` entry for this adapter type, pointed at its simulator."""
        anthropic = adapter_type == "anthropic"
        sim = self.of(adapter_type)
        return {
            "type": adapter_type,
            # OpenAI-style base URLs carry /v1; the anthropic type takes the bare host (both are accepted)
            "base_url": sim.url if anthropic else sim.url + "/v1",
            "api_key_env": KEY_ENV["anthropic" if anthropic else "openai"],
            "timeout_s": timeout_s,
            "models": models if models is not None else [f"m-{adapter_type}"],
        }

    def backup_provider(self, *, timeout_s: float = 5.0) -> dict[str, Any]:
        """The ``backup`` provider: an OpenAI-compatible upstream serving ``m-backup``."""
        return {"type": "openai_compatible", "base_url": self.backup.url, "timeout_s": timeout_s,
                "models": ["m-backup"]}


@dataclass(slots=True)
class LiveGateway:
    """A running gateway plus the loop it runs on and its captured access log."""

    running: RunningGateway
    thread: LoopThread
    log: Captured
    key: str = MASTER_KEY

    @property
    def url(self) -> str:
        return self.running.url

    def deployment(self, key: str) -> Deployment:
        return self.running.gateway.runtime.table.deployments[key]

    def records(self) -> list[dict[str, Any]]:
        """Every access-log record so far (flushed on the gateway's own loop)."""
        self.thread.run(_flush(self.running))
        return self.log.records()

    def record(self, request_id: str) -> dict[str, Any]:
        """One request's record; a stream's is written just after its last byte went out, so wait a little."""
        deadline = time.monotonic() + 30
        while True:
            found = [r for r in self.records() if r["request_id"] == request_id]
            if found or time.monotonic() > deadline:
                (record,) = found
                return record
            time.sleep(0.02)

    def inflight(self) -> tuple[int, int]:
        """Requests the HTTP server is answering, and upstream calls held by deployments."""
        deployments = self.running.gateway.runtime.table.deployments.values()
        return self.running.server.inflight, sum(d.health.inflight for d in deployments)

    def reset_health(self) -> None:
        self.thread.run(_reset_health(self.running))


async def _flush(running: RunningGateway) -> None:
    running.gateway.runtime.access_log.flush()


async def _reset_health(running: RunningGateway) -> None:
    for dep in running.gateway.runtime.table.deployments.values():
        dep.health.failures, dep.health.open_until, dep.health.last_error = 0, 0.0, None


@contextlib.contextmanager
def serve(providers: dict[str, Any], mappings: dict[str, Any] | None = None,
          gateway: dict[str, Any] | None = None) -> Iterator[LiveGateway]:
    """A gateway of this config on an ephemeral port, on its own loop thread (env already set)."""
    config = config_from(providers, mappings, gateway)
    thread = LoopThread()
    log = Captured()
    try:
        running = thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(log)))
        try:
            yield LiveGateway(running, thread, log)
        finally:
            thread.run(running.stop(grace=2.0))
    finally:
        thread.close()


def with_fallbacks() -> dict[str, Any]:
    """``fb-<type>``: the type's model first, then the backup."""
    return {"routing": {"exact_matches": {
        f"fb-{t}": {"provider": t, "model": f"m-{t}", "fallback_chain": ["backup/m-backup"]} for t in ADAPTER_TYPES}}}


@pytest.fixture(scope="session")
def session_sims() -> Iterator[Sims]:
    with contextlib.ExitStack() as stack:
        yield Sims(
            openai=stack.enter_context(Simulator(api_key=OPENAI_KEY).run_in_thread()),
            anthropic=stack.enter_context(Simulator(api_key=ANTHROPIC_KEY).run_in_thread()),
            backup=stack.enter_context(Simulator(Behaviour(reply=BACKUP_REPLY)).run_in_thread()),
        )


@pytest.fixture
def sims(session_sims: Sims) -> Sims:
    for sim in (session_sims.openai, session_sims.anthropic, session_sims.backup):
        sim.clear()
    return session_sims


def _set_keys(mp: pytest.MonkeyPatch) -> None:
    mp.setenv(MASTER_KEY_ENV, MASTER_KEY)
    mp.setenv(KEY_ENV["openai"], OPENAI_KEY)
    mp.setenv(KEY_ENV["anthropic"], ANTHROPIC_KEY)


def shared_providers(sims: Sims) -> dict[str, Any]:
    providers = {t: sims.provider(t) for t in ADAPTER_TYPES}
    providers["ollama"]["models"] = [
        {"name": "m-ollama", "tags": ["local"], "capabilities": ["chat"]},
        {"name": "qwen2.5:7b", "alias": "qwen-local", "tags": ["local", "code"],
         "capabilities": ["chat", "tools"], "context_length": 32768},
    ]
    providers["backup"] = sims.backup_provider()
    return providers


def shared_mappings() -> dict[str, Any]:
    mappings = with_fallbacks()
    # `model:` names the upstream's model: a request for house-model reaches vLLM as m-vllm
    mappings["routing"]["exact_matches"]["house-model"] = {"provider": "vllm", "model": "m-vllm"}
    return mappings


SHARED_GATEWAY = {
    "auth": {"master_key_env": MASTER_KEY_ENV},
    "server": {"max_body_bytes": MAX_BODY_BYTES, "request_timeout_s": 10},
    # the shared gateway never opens a circuit: circuit tests run their own gateway
    "resilience": {"max_attempts": 4, "circuit": {"failure_threshold": 1000, "cooldown_s": 30}},
}


@pytest.fixture(scope="session")
def session_gateway(session_sims: Sims) -> Iterator[LiveGateway]:
    with pytest.MonkeyPatch.context() as mp:
        _set_keys(mp)  # keys are read when the Runtime is built
        with serve(shared_providers(session_sims), shared_mappings(), SHARED_GATEWAY) as live:
            yield live


@pytest.fixture
def gateway(session_gateway: LiveGateway, sims: Sims) -> Iterator[LiveGateway]:
    try:
        yield session_gateway
    finally:
        session_gateway.reset_health()


@dataclass
class Faults:
    """Behaviours set on the simulators for one test; all undone when it ends."""

    sims: Sims
    _touched: list[tuple[Simulator, str | None]] = field(default_factory=list)

    def set(self, sim: Simulator, behaviour: Behaviour, *, model: str | None = None) -> None:
        """``behaviour`` for ``model`` on ``sim`` (or the simulator's global one)."""
        self._touched.append((sim, model))
        sim.set(behaviour, model=model)

    def fault(self, adapter_type: str, fault: Fault, **options: Any) -> None:
        """``fault`` on every request for ``m-<type>``."""
        self.set(self.sims.of(adapter_type), Behaviour(fault=fault, **options), model=f"m-{adapter_type}")

    def restore(self) -> None:
        for sim, model in reversed(self._touched):
            if model is None:
                sim.set(Behaviour(reply=BACKUP_REPLY) if sim is self.sims.backup else None)
            else:
                sim.set(None, model=model)
        self._touched.clear()


@pytest.fixture
def faults(sims: Sims) -> Iterator[Faults]:
    handle = Faults(sims)
    try:
        yield handle
    finally:
        handle.restore()


@pytest.fixture
def make_gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``make_gateway(providers, mappings, gateway) -> LiveGateway``, stopped at the end of the test."""
    _set_keys(monkeypatch)
    with contextlib.ExitStack() as stack:

        def make(providers: dict[str, Any], mappings: dict[str, Any] | None = None,
                 gateway: dict[str, Any] | None = None) -> LiveGateway:
            return stack.enter_context(serve(providers, mappings, gateway))

        yield make


def ask_each_worker(url: str, workers: int, *, parent: int, key: str | None = None,
                    until: Any = None, requests: int = 400, timeout_s: float = 60.0) -> dict[int, dict[str, Any]]:
    """``GET /admin/config`` on fresh connections until each of ``workers`` processes has answered.

    A ``labgate serve --workers N`` process forks N workers that accept on one socket; the kernel
    decides which one takes a connection, so this asks at least ``requests`` times (the odds that
    one of two idle workers never wins 400 accepts are nil), and past that, pausing 20 ms between
    asks, until ``timeout_s``: a worker busy reloading on a loaded machine wins no accept while its
    sibling answers 400 requests in a second. Every answer must come from a child of ``parent``; with
    ``until`` (a predicate on the view), a worker counts only once its latest answer passes it.
    Returns each worker's latest view, keyed by its pid.
    """
    headers = {"authorization": f"Bearer {key}"} if key else {}
    views: dict[int, dict[str, Any]] = {}
    deadline, asked = time.monotonic() + timeout_s, 0
    while asked < requests or time.monotonic() < deadline:
        asked += 1
        if asked > requests:
            time.sleep(0.02)
        request = urllib.request.Request(url + "/admin/config", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as resp:
            view = orjson.loads(resp.read())
        pid = view["worker"]
        if pid not in views:
            with open(f"/proc/{pid}/stat") as stat:  # field 4: the parent's pid
                assert int(stat.read().rsplit(")", 1)[1].split()[1]) == parent, f"{pid} is not a worker of {parent}"
        views[pid] = view
        assert len(views) <= workers, f"more workers answered than were started: {sorted(views)}"
        if len(views) == workers and (until is None or all(until(v) for v in views.values())):
            return views
    raise AssertionError(f"after {asked} requests in {timeout_s} s, these workers had answered (as wanted): "
                         f"{ {pid: until is None or until(v) for pid, v in views.items()} }; {workers} expected")


@pytest.fixture
def each_worker() -> Any:
    """:func:`ask_each_worker`, for tests of ``labgate serve --workers N``."""
    return ask_each_worker
