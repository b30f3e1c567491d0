"""Replicas on one Redis: circuits and config reloads reach all of them; each one's config version is listed.

With ``state.url`` set, every gateway process (each replica, and each of
``--workers N``) runs one :class:`Replicas` task. Every
``state.sync_interval_s`` (default 0.5 s), or at once when something
changed here, it makes one round trip (a ``MULTI``/``EXEC`` pipeline) that

- writes what changed in this process: circuits that opened or closed
  (``labgate:{cluster}:circuit:{deployment}``, JSON, expiring a minute after
  the cooldown ends) and this replica's heartbeat (hash
  ``labgate:{cluster}:replicas``: config version, sync status, time);
- reads the circuits of every deployment this process routes to, the config
  announcement (hash ``labgate:{cluster}:config``: ``seq``, ``version``,
  ``by``, ``at``) and the other replicas' heartbeats.

A circuit that opens on one replica is open on every replica within one
interval plus a round trip (:func:`~labgate.routing.circuit.adopt`); the
replica whose probe succeeds closes it everywhere
(:func:`~labgate.routing.circuit.recovered`). Failures are still counted per
process: the shared state is "open" / "closed", not the count.

Config sync: an admin API reload that applies (``POST /admin/config/reload``,
``labgate reload``) increments ``seq`` and announces its version. Every
replica that sees a higher ``seq`` reloads **its own** config source (every
replica reads the same files: a ConfigMap, a shared volume), validates it
and swaps — or refuses, keeps serving what it has and reports ``rejected``
(``/health/readiness`` detail, ``/admin/config``, the metric
``labgate_config_sync_rejected``). A replica whose files are not yet the
announced ones (a ConfigMap update takes a while to reach a pod) is
``stale`` and tries again as soon as its files change.

Polling a version, not pub/sub: a replica that was starting, or cut off from
Redis, when a message went out would need the poll anyway, and the poll
alone bounds the delay. Redis down: each step is skipped (logged once by
:class:`~labgate.state.redis.RedisLink`), circuits stay per process, what
changed here meanwhile is written when Redis is back, and the loop picks up
the cluster's state then — no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import orjson

from labgate.routing.circuit import Health, adopt, recovered
from labgate.state.base import KEY_PREFIX, StateUnavailableError
from labgate.state.redis import RedisLink

if TYPE_CHECKING:
    from labgate.config.load import Config
    from labgate.config.reload import Reloader, ReloadResult
    from labgate.gateway import Gateway

log = logging.getLogger("labgate.replicas")
KEEP_CLOSED_S = 60.0  # how long a circuit's last change stays readable after its cooldown
REPLICA_GONE_S = 10.0  # a replica not heard from for this long is dropped from the list
ERRORS_SHOWN = 5  # a rejected config's errors kept for /health/readiness


class Replicas:
    """This process's link to the other replicas of its cluster (one Redis connection, one task)."""

    def __init__(self, link: RedisLink, *, cluster: str, interval_s: float, share_circuits: bool = True,
                 share_config: bool = True, replica_id: str | None = None) -> None:
        self.link = link
        self.cluster = cluster
        self.interval_s = interval_s
        self.share_circuits = share_circuits
        self.share_config = share_config
        self.id = replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self._prefix = f"{KEY_PREFIX}:{cluster}"
        self._pending: dict[str, tuple[bytes, float]] = {}  # deployment → (circuit state, ttl s) to write
        self._announce: str | None = None  # a version this replica applied from the API, to announce
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._applying: asyncio.Task[None] | None = None
        self._signature: object = None  # the config files' signature at the last attempt to catch up
        self.gateway: Gateway | None = None
        self.reloader: Reloader | None = None
        self.seq: int | None = None  # the last announcement seen (None: Redis not read yet)
        self.target: str | None = None  # the version the cluster last announced
        self.sync = "unknown"  # in_sync | applying | stale | rejected | differs | unknown
        self.rejected: dict[str, Any] | None = None
        self.members: list[dict[str, Any]] = []  # the replicas heard from lately (this one included)
        self.adopted = 0  # circuits opened here because another replica saw the deployment fail
        self.closed_elsewhere = 0  # circuits closed here because another replica's probe succeeded

    @classmethod
    def from_config(cls, config: Config) -> Replicas | None:
        """None without ``state.url`` (one process's state is its own) or when both kinds of sharing are off."""
        state = config.gateway.state
        if not state.url or not (state.share_circuits or state.share_config):
            return None
        link = RedisLink(state.url, timeout_s=state.timeout_s, retry_s=state.retry_s, max_connections=2)
        return cls(link, cluster=state.cluster, interval_s=state.sync_interval_s,
                   share_circuits=state.share_circuits, share_config=state.share_config)

    # -- circuits (routing/circuit.py's CircuitShare) ----------------------------------------

    def opened(self, health: Health, cooldown_s: float) -> None:
        value = {"open": True, "until": time.time() + cooldown_s, "error": health.last_error or "",
                 "by": self.id, "at": health.changed_at}
        self._pending[health.key] = (orjson.dumps(value), cooldown_s + KEEP_CLOSED_S)
        self._wake.set()

    def closed(self, health: Health) -> None:
        value = {"open": False, "by": self.id, "at": health.changed_at}
        self._pending[health.key] = (orjson.dumps(value), KEEP_CLOSED_S)
        self._wake.set()

    # -- config ----------------------------------------------------------------------------

    def announce(self, result: ReloadResult) -> None:
        """An admin API reload applied here: tell the other replicas (the Reloader's ``on_applied``)."""
        if self.share_config and result.status == "applied":
            self._announce = result.version
            self.target, self.sync, self.rejected = result.version, "in_sync", None
            self._wake.set()

    # -- the loop --------------------------------------------------------------------------

    async def start(self, gateway: Gateway, reloader: Reloader | None) -> None:
        self.gateway, self.reloader = gateway, reloader
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except StateUnavailableError:
                pass  # logged once by the link; circuits stay per process meanwhile
            except Exception:
                log.exception("replicas: a sync step failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def step(self) -> None:
        """One round trip: write what changed here, read the cluster's circuits, config and replicas."""
        assert self.gateway is not None
        self.link.check()  # resting after a failure: no I/O
        deployments = self.gateway.runtime.table.every_deployment() if self.share_circuits else []
        pending, self._pending = self._pending, {}
        announce, self._announce = self._announce, None
        now = time.time()
        pipe = self.link.client.pipeline(transaction=True)
        for key, (value, ttl) in pending.items():
            pipe.set(self._circuit_key(key), value, px=int(ttl * 1000))
        config_key = f"{self._prefix}:config"
        if announce is not None:
            pipe.hincrby(config_key, "seq", 1)
            pipe.hset(config_key, mapping={"version": announce, "by": self.id, "at": repr(now)})
        pipe.hgetall(config_key)
        if deployments:
            pipe.mget([self._circuit_key(d.key) for d in deployments])
        members_key = f"{self._prefix}:replicas"
        pipe.hset(members_key, self.id, orjson.dumps(self._heartbeat(now)))
        pipe.hgetall(members_key)
        try:
            async with asyncio.timeout(max(self.link.timeout_s * 4, 1.0)):
                answers = await pipe.execute()
        except self.link.errors as exc:
            for key, change in pending.items():  # written when Redis is back, unless something newer is
                self._pending.setdefault(key, change)
            if announce is not None and self._announce is None:
                self._announce = announce
            raise self.link.failed(exc) from None
        self.link.succeeded()
        answers = answers[len(pending) + (2 if announce is not None else 0):]
        config = answers[0]
        if deployments:
            self._read_circuits(deployments, answers[1])
        self._read_members(answers[-1], now)
        self._read_config(config, announced=announce is not None)

    def _circuit_key(self, deployment: str) -> str:
        return f"{self._prefix}:circuit:{deployment}"

    def _heartbeat(self, now: float) -> dict[str, Any]:
        version = self.reloader.active.version if self.reloader is not None else None
        return {"version": version, "sync": self.sync, "seq": self.seq, "at": now,
                "rejected": None if self.rejected is None else self.rejected["version"]}

    def _read_circuits(self, deployments: list[Any], values: list[bytes | None]) -> None:
        assert self.gateway is not None
        circuit = self.gateway.runtime.circuit
        for dep, raw in zip(deployments, values, strict=True):
            if raw is None:
                continue
            try:
                state = orjson.loads(raw)
                if state["by"] == self.id:
                    continue
                if state["open"]:
                    if adopt(dep.health, circuit, until=float(state["until"]), at=float(state["at"]),
                             error=f"{state['error']} (seen by replica {state['by']})"):
                        self.adopted += 1
                        log.warning("circuit of %s opened: it failed on replica %s", dep.key, state["by"])
                elif recovered(dep.health, at=float(state["at"])):
                    self.closed_elsewhere += 1
                    log.info("circuit of %s closed: replica %s saw it recover", dep.key, state["by"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("replicas: ignoring a malformed circuit state for %s", dep.key)

    def _read_members(self, raw: dict[bytes, bytes], now: float) -> None:
        members, gone = [], []
        for rid, value in raw.items():
            try:
                beat = orjson.loads(value)
                age = now - float(beat["at"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                gone.append(rid)
                continue
            if age > REPLICA_GONE_S:
                gone.append(rid)
                continue
            members.append({"id": rid.decode(errors="replace"), "version": beat.get("version"),
                            "sync": beat.get("sync"), "rejected": beat.get("rejected"),
                            "age_s": round(max(age, 0.0), 2)})
        self.members = sorted(members, key=lambda m: m["id"])
        if gone:  # removed by whoever notices first; harmless when several do
            task = asyncio.get_running_loop().create_task(self._forget(gone))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _forget(self, ids: list[bytes]) -> None:
        with contextlib.suppress(*self.link.errors):
            async with asyncio.timeout(max(self.link.timeout_s * 4, 1.0)):
                await self.link.client.hdel(f"{self._prefix}:replicas", *ids)

    def _read_config(self, raw: dict[bytes, bytes], *, announced: bool) -> None:
        if not self.share_config or self.reloader is None:
            return
        seq = int(raw.get(b"seq", b"0"))
        version = raw[b"version"].decode() if b"version" in raw else None
        by = raw.get(b"by", b"").decode()
        active = self.reloader.active.version
        first, self.seq = self.seq is None, seq
        if first or announced:  # at start this replica serves its own files: it only reports how they compare
            self.target = version
            if not announced:
                self.sync = "in_sync" if version in (None, active) else "differs"
            return
        if self._applying is not None:
            return
        if version is not None and version != self.target and by != self.id:
            self.target = version
            self._catch_up(version)
        elif self.sync in ("stale", "rejected", "differs") and self.target == active:
            self.sync, self.rejected = "in_sync", None  # a local reload got there meanwhile
        elif self.sync in ("stale", "rejected") and self.reloader.source.signature() != self._signature:
            self._catch_up(self.target or active)  # the files changed since the last attempt

    def _catch_up(self, version: str) -> None:
        self._applying = asyncio.get_running_loop().create_task(self._apply(version))

    async def _apply(self, version: str) -> None:
        """Reload this replica's own config source towards the announced ``version``."""
        reloader = self.reloader
        assert reloader is not None
        try:
            if reloader.active.version == version:
                self.sync, self.rejected = "in_sync", None
                return
            self.sync = "applying"
            self._signature = reloader.source.signature()
            result = await reloader.reload(trigger="sync")
            if result.status == "refused":
                errors = [p.as_dict() for p in result.problems if p.severity == "error"][:ERRORS_SHOWN]
                self.sync = "rejected"
                self.rejected = {"version": version, "serving": reloader.active.version, "at": time.time(),
                                 "errors": errors}
                log.error("replicas: the cluster's config %s was refused here; still serving %s",
                          version, reloader.active.version)
            elif reloader.active.version == version:
                self.sync, self.rejected = "in_sync", None
            else:
                self.sync = "stale"  # this replica's files are not (yet) the announced ones
                log.warning("replicas: the cluster runs config %s but the files here are %s; "
                            "retrying when they change", version, reloader.active.version)
        except Exception:
            self.sync = "stale"
            log.exception("replicas: catching up with config %s failed", version)
        finally:
            self._applying = None
            self._wake.set()  # report the outcome in the next heartbeat now

    # -- reporting -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """``GET /admin/config`` → ``cluster``: this replica's sync state and every replica heard from."""
        return {"name": self.cluster, "replica": self.id, "sync": self.sync, "announced_version": self.target,
                "seq": self.seq, "rejected": self.rejected, "share_circuits": self.share_circuits,
                "share_config": self.share_config, "redis": self.link.status(), "replicas": self.members,
                "circuits_adopted": self.adopted, "circuits_closed_elsewhere": self.closed_elsewhere}

    def prometheus(self) -> str:
        up = 0 if self.link.down_until else 1
        return ("# HELP labgate_config_sync_rejected 1 while this replica refuses the config the cluster "
                "announced (it keeps serving its previous one).\n# TYPE labgate_config_sync_rejected gauge\n"
                f"labgate_config_sync_rejected {int(self.rejected is not None)}\n"
                "# HELP labgate_replicas_redis_up 1 while the replicas' shared state (Redis) answers.\n"
                f"# TYPE labgate_replicas_redis_up gauge\nlabgate_replicas_redis_up {up}\n"
                "# HELP labgate_circuits_adopted_total Circuits opened here because another replica saw "
                "the deployment fail.\n# TYPE labgate_circuits_adopted_total counter\n"
                f"labgate_circuits_adopted_total {self.adopted}\n")

    async def stop(self) -> None:
        """Stop the loop, write what is pending, leave the replica list."""
        for task in (self._task, self._applying):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(StateUnavailableError):
            if self._pending:
                pending, self._pending = self._pending, {}
                with contextlib.suppress(*self.link.errors):
                    pipe = self.link.client.pipeline(transaction=False)
                    for key, (value, ttl) in pending.items():
                        pipe.set(self._circuit_key(key), value, px=int(ttl * 1000))
                    async with asyncio.timeout(max(self.link.timeout_s * 4, 1.0)):
                        await pipe.execute()
            await self._forget([self.id.encode()])
        await self.link.aclose()
