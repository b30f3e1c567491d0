"""Capacity across replicas: a provider's ``max_parallel_requests`` counted in Redis (``state.url``).

Every replica (and worker) keeps its own :class:`~labgate.routing.gate.Gate`: its
in-flight count and its line. With ``state.url`` set (and ``queue.shared``, the
default), a slot of the gate is taken only together with a *lease* in Redis: one
member of the sorted set ``labgate:capacity:{namespace}:{provider}`` whose score
is its expiry (Redis's clock). One script call takes a lease when fewer than the
limit are live (expired ones are dropped first), one ``ZREM`` gives it back.
So N replicas together never send an engine more than its ``max_parallel_requests``.

Leases expire: each replica renews the ones it holds every ``queue.lease_ttl_s / 3``,
so a replica that crashed (or lost Redis) stops counting after ``lease_ttl_s`` at
most. A slot handed from a finished request to one waiting in the same replica
keeps its lease (no round trip). A request waiting for a slot that another replica
holds is served by polling: while a gate has waiters and a free local slot, it
asks Redis every ``queue.shared_poll_s`` and hands a lease it got to its best waiter.
Priorities and arrival order hold within a replica; across replicas a freed slot
goes to whichever replica asks first.

Redis down or too slow (``state.timeout_s``): fall back to the per-process gate — each
replica then admits up to the limit on its own (logged once by the link, counted in
``fallbacks``), and leases are taken again once Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from labgate.state.base import StateUnavailableError

if TYPE_CHECKING:
    from labgate.config.load import Config
    from labgate.routing.gate import Gate
    from labgate.state.redis import RedisLink

log = logging.getLogger("labgate.routing")

# KEYS[1] the provider's set; ARGV: limit, ttl ms, lease id. Returns 1 (taken) or 0 (full).
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
  return 1
end
return 0
"""
# KEYS[1] the provider's set; ARGV: ttl ms, lease ids. Pushes the expiry of those still present.
RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
"""
COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
KEY_PREFIX = "labgate:capacity"
_process = os.urandom(6).hex()  # this process's lease ids: labgate:… members never collide across replicas
_ids = itertools.count()


class Leases:
    """One provider's leases in Redis, as held by this process's gate."""

    __slots__ = ("_poller", "_renewer", "_tasks", "fallbacks", "held", "key", "link", "poll_s", "ttl_ms",
                 "unleased")

    def __init__(self, link: RedisLink, *, key: str, ttl_s: float, poll_s: float) -> None:
        self.link = link
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.poll_s = poll_s
        self.held: list[str] = []  # lease ids this process holds (one per leased slot in flight)
        self.unleased = 0  # slots taken while Redis was unavailable (per-process fallback)
        self.fallbacks = 0  # slots taken without a lease because Redis did not answer
        self._renewer: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # releases on their way (a release never waits)

    async def take(self, limit: float) -> bool:
        """A lease when fewer than ``limit`` are live across replicas; True too when Redis is unavailable."""
        lease = f"{_process}:{next(_ids)}"
        try:
            taken = await self.link.command("EVAL", TAKE, 1, self.key, repr(float(limit)), self.ttl_ms, lease)
        except StateUnavailableError:
            self.unleased += 1
            self.fallbacks += 1
            return True
        if not taken:
            return False
        self.held.append(lease)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return True

    def give_back(self) -> None:
        """A slot is freed: its lease goes (a background ``ZREM``; it expires anyway if that fails)."""
        if self.unleased:
            self.unleased -= 1
            return
        if not self.held:
            return
        lease = self.held.pop()
        task = asyncio.get_running_loop().create_task(self._remove(lease))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, lease: str) -> None:
        with contextlib.suppress(StateUnavailableError):
            await self.link.command("ZREM", self.key, lease)

    async def _renew(self) -> None:
        """Push the expiry of every held lease, every third of the TTL, while any is held."""
        while self.held:
            await asyncio.sleep(self.ttl_ms / 3000)
            held = list(self.held)
            if held:
                with contextlib.suppress(StateUnavailableError):
                    await self.link.command("EVAL", RENEW, 1, self.key, self.ttl_ms, *held)

    def watch(self, gate: Gate) -> None:
        """A request waits at ``gate``: poll Redis for slots other replicas free, while anyone waits."""
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll(gate))

    async def _poll(self, gate: Gate) -> None:
        while gate.waiting > 0 and gate.closed is None:
            if gate.inflight < gate.limit and await self.take(gate.limit):
                gate.inflight += 1
                gate.release()  # to the best live waiter, or freed again (the lease with it)
                continue
            await asyncio.sleep(self.poll_s)

    def status(self) -> dict[str, object]:
        return {"leases_held": len(self.held), "unleased": self.unleased, "fallbacks": self.fallbacks}

    async def live(self) -> int | None:
        """Live leases across replicas (admin; None when Redis does not answer)."""
        try:
            count = await self.link.command("EVAL", COUNT, 1, self.key)
        except StateUnavailableError:
            return None
        return int(count)

    async def aclose(self) -> None:
        for task in (self._renewer, self._poller):
            if task is not None:
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)



class SharedCapacity:
    """The Redis link the gates of one Runtime take their leases through (``state.url``)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.owns_link = True  # a reload with the same settings hands the link on (then the old one keeps it open)

    @classmethod
    def build(cls, config: Config, gates: Mapping[str, Gate], *,
              previous: SharedCapacity | None = None) -> SharedCapacity | None:
        """Leases for every gate when ``state.url`` is set and ``queue.shared`` (None: per-process gates)."""
        url, queue = config.gateway.state.url, config.gateway.queue
        if not url or not queue.shared or not gates:
            for gate in gates.values():  # a reload turned sharing off: per process from now (held leases expire)
                gate.shared = None
            return None
        source = (url, queue.namespace, queue.lease_ttl_s, queue.shared_poll_s)
        if previous is not None and previous.owns_link and previous.link.source == source:
            link, previous.owns_link = previous.link, False
        else:
            from labgate.state.redis import RedisLink

            s = config.gateway.state
            link = RedisLink(url, timeout_s=s.timeout_s, retry_s=s.retry_s, max_connections=s.max_connections)
            link.source = source
        shared = cls(link)
        for name, gate in gates.items():
            if gate.shared is None or gate.shared.link is not link:  # kept by a reload on the same link: kept
                gate.shared = Leases(link, key=f"{KEY_PREFIX}:{queue.namespace}:{name}", ttl_s=queue.lease_ttl_s,
                                     poll_s=queue.shared_poll_s)
        return shared

    async def aclose(self, gates: Mapping[str, Gate]) -> None:
        if not self.owns_link:
            return
        for gate in gates.values():
            if gate.shared is not None and gate.shared.link is self.link:
                await gate.shared.aclose()
        await self.link.aclose()
