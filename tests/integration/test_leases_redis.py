"""Capacity leases (``routing/leases.py``) on the real Redis, in process: what a lease holds in Redis, its
renewal, its release, the poller, and the leases of a Runtime across reloads and at close.

Each test uses its own namespace (a key of its own); nothing else in Redis is touched.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from labgate.routing.gate import Gate, Waiter
from labgate.routing.leases import KEY_PREFIX, Leases
from labgate.runtime import Runtime
from labgate.state.redis import RedisLink
from labgate.testing.gateway import config_from

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def key(redis_url: str) -> Iterator[str]:
    """A capacity key of this test's own namespace (deleted afterwards)."""
    import redis

    namespace = "t" + uuid.uuid4().hex[:12]
    yield f"{KEY_PREFIX}:{namespace}:gpu"
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(f"{KEY_PREFIX}:{namespace}:gpu")
    finally:
        client.close()


def _redis(redis_url: str) -> Any:
    """A blocking client: while it answers, the event loop (and every task on it) stands still."""
    import redis

    return redis.Redis.from_url(redis_url, socket_timeout=5)


def _score(redis_url: str, key: str, member: str) -> float | None:
    client = _redis(redis_url)
    try:
        return client.zscore(key, member)  # type: ignore[no-any-return]
    finally:
        client.close()


def _card(redis_url: str, key: str) -> int:
    client = _redis(redis_url)
    try:
        return int(client.zcard(key))
    finally:
        client.close()


async def _until(check: Any, what: str) -> None:
    """Wait for ``check()`` to hold; the 30 s bound only guards against a hang."""
    for _ in range(3000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still not {what} after 30 s")


@pytest.mark.asyncio
async def test_a_lease_expires_its_ttl_from_now_and_the_key_twice_that(redis_url: str, key: str) -> None:
    link = RedisLink(redis_url, timeout_s=2.0, retry_s=1.0, max_connections=2)
    leases = Leases(link, key=key, ttl_s=100_000, poll_s=0.05)  # a TTL so long that the test's own pace is noise
    try:
        assert await leases.take(2) is True
        assert leases.status() == {"leases_held": 1, "unleased": 0, "fallbacks": 0}
        client = _redis(redis_url)
        try:
            seconds, micros = client.time()
            now_ms = seconds * 1000 + micros // 1000
            expiry, key_ttl = client.zscore(key, leases.held[0]), client.pttl(key)
        finally:
            client.close()
        assert 100_000_000 - 50_000 < expiry - now_ms <= 100_000_000
        assert 200_000_000 - 50_000 < key_ttl <= 200_000_000
    finally:
        await leases.aclose()
        await link.aclose()


@pytest.mark.asyncio
async def test_held_leases_are_renewed_to_their_ttl_from_now_also_after_redis_rested(redis_url: str,
                                                                                     key: str) -> None:
    """A renewal refused while the link rests after a failure (``down_until``, as the link sets it) is tried
    again at the next period: the renewer lives on."""
    link = RedisLink(redis_url, timeout_s=2.0, retry_s=1.0, max_connections=2)
    leases = Leases(link, key=key, ttl_s=0.3, poll_s=0.05)  # renewed every 0.1 s
    try:
        assert await leases.take(2) is True
        lease = leases.held[0]
        first = _score(redis_url, key, lease)
        assert first is not None
        await _until(lambda: (_score(redis_url, key, lease) or 0) > first, "renewed")
        link.down_until = time.monotonic() + 0.35  # Redis "down": the next renewals are refused at once
        rested = _score(redis_url, key, lease) or 0
        await asyncio.sleep(0.4)
        await _until(lambda: (_score(redis_url, key, lease) or 0) > rested, "renewed after the rest")
        client = _redis(redis_url)
        try:
            seconds, micros = client.time()
            expiry = client.zscore(key, lease)
        finally:
            client.close()
        assert expiry - (seconds * 1000 + micros // 1000) <= 300  # pushed to the TTL from now, no further
    finally:
        await leases.aclose()
        await link.aclose()


@pytest.mark.asyncio
async def test_a_release_while_redis_rests_is_quiet_and_forgotten(redis_url: str, key: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The release's ``ZREM`` fails (the lease expires on its own); nothing is logged for it, and the task is
    forgotten once done (``_tasks``, private: nothing else shows a set that would grow with every request)."""
    link = RedisLink(redis_url, timeout_s=2.0, retry_s=30.0, max_connections=2)
    leases = Leases(link, key=key, ttl_s=30, poll_s=0.05)
    try:
        assert await leases.take(2) is True
        link.down_until = time.monotonic() + 30
        leases.give_back()
        assert leases.held == []
        await _until(lambda: not leases._tasks, "forgotten")
        gc.collect()  # a task whose exception nobody read says so when it is collected
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert _card(redis_url, key) == 1  # still there: it expires after its TTL
    finally:
        link.down_until = 0.0
        await leases.aclose()
        await link.aclose()


@pytest.mark.asyncio
async def test_closing_waits_for_the_releases_on_their_way(redis_url: str, key: str) -> None:
    link = RedisLink(redis_url, timeout_s=2.0, retry_s=1.0, max_connections=2)
    leases = Leases(link, key=key, ttl_s=30, poll_s=0.05)
    try:
        assert [await leases.take(2), await leases.take(2)] == [True, True]
        leases.give_back()
        leases.give_back()
        await leases.aclose()
        assert _card(redis_url, key) == 0  # read while the loop stands still: both ZREMs were done before
    finally:
        await link.aclose()


@pytest.mark.asyncio
async def test_the_poller_serves_every_waiter_as_slots_free_elsewhere(redis_url: str, key: str) -> None:
    link = RedisLink(redis_url, timeout_s=2.0, retry_s=1.0, max_connections=4)
    a, b = Gate(2, max_queue=8), Gate(2, max_queue=8)  # two replicas' gates for one engine of 2
    a.shared = Leases(link, key=key, ttl_s=30, poll_s=0.01)
    b.shared = Leases(link, key=key, ttl_s=30, poll_s=0.01)
    try:
        assert [await a.take_shared(prefer=False), await a.take_shared(prefer=False)] == [True, True]
        assert await b.take_shared(prefer=False) is False  # b's slots are free, the engine's are not
        waiters = [Waiter(1, [b]), Waiter(1, [b])]
        b.shared.watch(b)
        a.release()
        a.release()
        served = await asyncio.wait_for(asyncio.gather(*(w.future for w in waiters)), 10)
        assert (served, [w.leave() for w in waiters], b.inflight, b.shared.status()) == (
            [b, b], [b, b], 2, {"leases_held": 2, "unleased": 0, "fallbacks": 0})
        b.release()
        b.release()
    finally:
        for gate in (a, b):
            assert gate.shared is not None
            await gate.shared.aclose()
        await link.aclose()


@pytest.mark.asyncio
async def test_the_poller_never_takes_a_slot_past_the_local_limit(redis_url: str, key: str) -> None:
    """Redis lost the leases (a restart): it has room, but this replica's one slot is in use."""
    link = RedisLink(redis_url, timeout_s=2.0, retry_s=1.0, max_connections=2)
    gate = Gate(1, max_queue=8)
    gate.shared = Leases(link, key=key, ttl_s=30, poll_s=0.01)
    try:
        assert await gate.take_shared(prefer=False) is True
        client = _redis(redis_url)
        try:
            client.delete(key)
        finally:
            client.close()
        waiter = Waiter(1, [gate])
        gate.shared.watch(gate)
        await asyncio.sleep(0.3)  # some 30 polls
        assert (waiter.future.done(), gate.inflight, _card(redis_url, key)) == (False, 1, 0)
        assert waiter.leave() is None
    finally:
        await gate.shared.aclose()
        await link.aclose()


# --- a Runtime's leases (SharedCapacity) -------------------------------------------------------


def _config(redis_url: str | None, namespace: str, *, state: dict[str, Any] | None = None, **queue: Any) -> Any:
    providers = {"gpu": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "models": ["m"],
                         "max_parallel_requests": 1}}
    gateway: dict[str, Any] = {"queue": {"namespace": namespace, **queue}, "store": {"capture": "none"},
                               "logging": {"requests": False}}
    if redis_url is not None:
        gateway["state"] = {"url": redis_url, "timeout_s": 2.0, **(state or {})}
    return config_from(providers, {}, gateway)


@pytest.mark.asyncio
async def test_gates_are_shared_only_with_a_state_url_and_sharing_on(redis_url: str, key: str) -> None:
    namespace = key.split(":")[2]
    alone = Runtime.build(_config(None, namespace))
    shared = Runtime.build(_config(redis_url, namespace))
    gate = shared.table.gates["gpu"]
    assert (alone.capacity, alone.table.gates["gpu"].shared) == (None, None)
    assert shared.capacity is not None and isinstance(gate.shared, Leases)
    unshared = Runtime.build(_config(redis_url, namespace, shared=False), previous=shared)  # a reload turns it off
    try:
        assert unshared.table.gates["gpu"] is gate  # kept by the reload (its count goes on), now per process
        assert (unshared.capacity, gate.shared) == (None, None)
        assert (gate.try_acquire(), gate.try_acquire(), _card(redis_url, key)) == (True, False, 0)
        gate.release()
    finally:
        for runtime in (alone, shared, unshared):
            await runtime.aclose()


@pytest.mark.asyncio
async def test_a_reload_with_the_same_settings_keeps_the_link_and_the_leases_in_flight(redis_url: str,
                                                                                      key: str) -> None:
    namespace = key.split(":")[2]
    old = Runtime.build(_config(redis_url, namespace, lease_ttl_s=0.3))
    gate = old.table.gates["gpu"]
    assert await gate.take_shared(prefer=False) is True  # a request in flight across the reload
    leases = gate.shared
    assert isinstance(leases, Leases)
    lease = leases.held[0]
    new = Runtime.build(_config(redis_url, namespace, lease_ttl_s=0.3), previous=old)
    try:
        assert (new.table.gates["gpu"] is gate, gate.shared is leases) == (True, True)
        await old.aclose()  # the old runtime retires: the link and the leases it handed on go on
        since = _score(redis_url, key, lease) or 0
        await _until(lambda: (_score(redis_url, key, lease) or 0) > since, "renewed")
        gate.release()  # the request ends: its lease goes
        await _until(lambda: _card(redis_url, key) == 0, "given back")
        assert await gate.take_shared(prefer=False) is True
        assert (_card(redis_url, key), leases.status()) == (1, {"leases_held": 1, "unleased": 0, "fallbacks": 0})
        gate.release()
    finally:
        await new.aclose()


@pytest.mark.asyncio
async def test_a_reload_to_another_namespace_moves_the_leases_and_the_old_runtime_leaves_them_alone(
        redis_url: str, key: str) -> None:
    first, second = key.split(":")[2], "t" + uuid.uuid4().hex[:12]
    moved = f"{KEY_PREFIX}:{second}:gpu"
    old = Runtime.build(_config(redis_url, first))
    new = Runtime.build(_config(redis_url, second, lease_ttl_s=0.3), previous=old)
    gate = new.table.gates["gpu"]
    try:
        assert gate is old.table.gates["gpu"] and isinstance(gate.shared, Leases) and gate.shared.key == moved
        assert await gate.take_shared(prefer=False) is True
        lease = gate.shared.held[0]
        await old.aclose()  # closes its own link only: the new leases are still renewed
        since = _score(redis_url, moved, lease) or 0
        await _until(lambda: (_score(redis_url, moved, lease) or 0) > since, "renewed")
        assert _card(redis_url, key) == 0
        gate.release()
    finally:
        await new.aclose()
        client = _redis(redis_url)
        try:
            client.delete(moved)
        finally:
            client.close()


@pytest.mark.asyncio
async def test_closing_a_runtime_sends_its_releases_first(redis_url: str, key: str) -> None:
    runtime = Runtime.build(_config(redis_url, key.split(":")[2]))
    gate = runtime.table.gates["gpu"]
    assert await gate.take_shared(prefer=False) is True
    gate.release()
    assert runtime.capacity is not None
    await runtime.capacity.aclose(runtime.table.gates)
    assert _card(redis_url, key) == 0  # read while the loop stands still
    await runtime.aclose()


@pytest.mark.asyncio
async def test_a_runtimes_leases_wait_for_a_silent_redis_its_timeout_then_fall_back() -> None:
    """A server that accepts and never answers: the link gives up after ``state.timeout_s`` (its own timeout,
    before the client library's 5 s read timeout), then the slot is taken without a lease."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client goes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = _config(f"redis://127.0.0.1:{port}/0", "silent", state={"timeout_s": 0.2, "retry_s": 30.0})
    runtime = Runtime.build(config)
    gate = runtime.table.gates["gpu"]
    try:
        assert await asyncio.wait_for(gate.take_shared(prefer=False), 60) is True
        assert gate.shared is not None and gate.shared.status() == {"leases_held": 0, "unleased": 1, "fallbacks": 1}
        status = gate.shared.link.status()
        assert (status["up"], status["failures"], status["last_error"]) == (False, 1, "TimeoutError")
        gate.release()
    finally:
        await runtime.aclose()
        server.close()


@pytest.mark.asyncio
async def test_a_runtimes_waiter_gets_the_slot_another_replica_frees(redis_url: str, key: str) -> None:
    runtime = Runtime.build(_config(redis_url, key.split(":")[2], shared_poll_s=0.01))
    gate = runtime.table.gates["gpu"]
    link = RedisLink(redis_url, timeout_s=2.0, retry_s=1.0, max_connections=2)
    other = Leases(link, key=key, ttl_s=30, poll_s=0.01)  # another replica holds the engine's one slot
    try:
        assert await other.take(1) is True
        assert await gate.take_shared(prefer=False) is False
        waiter = Waiter(1, [gate])
        assert gate.shared is not None
        gate.shared.watch(gate)
        other.give_back()
        assert await asyncio.wait_for(waiter.future, 10) is gate
        assert (waiter.leave(), gate.inflight) == (gate, 1)
        gate.release()
    finally:
        await other.aclose()
        await link.aclose()
        await runtime.aclose()
