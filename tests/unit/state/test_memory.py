"""The in-process entry store: LRU bounded by entries and bytes, with a time to live."""

from __future__ import annotations

import pytest

from labgate.state.memory import MemoryEntries


@pytest.mark.asyncio
async def test_lru_evicts_the_least_recently_used_past_max_entries() -> None:
    store = MemoryEntries(max_entries=2, max_bytes=1000)
    await store.put("a", b"1", 60)
    await store.put("b", b"2", 60)
    assert await store.get("a") == b"1"  # a is now the most recent
    await store.put("c", b"3", 60)
    assert (await store.get("b"), await store.get("a"), await store.get("c")) == (None, b"1", b"3")
    assert (len(store), store.evictions) == (2, 1)


@pytest.mark.asyncio
async def test_bytes_bound_and_oversized_values() -> None:
    store = MemoryEntries(max_entries=100, max_bytes=10)
    await store.put("a", b"x" * 6, 60)
    await store.put("b", b"y" * 6, 60)  # 12 bytes > 10: a goes
    assert (await store.get("a"), store.bytes) == (None, 6)
    await store.put("big", b"z" * 11, 60)  # larger than the whole store: not kept, nothing evicted
    assert (await store.get("big"), await store.get("b")) == (None, b"y" * 6)
    await store.put("b", b"w", 60)  # replacing a key adjusts the byte count
    assert store.bytes == 1


@pytest.mark.asyncio
async def test_expiry_and_admin_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    store = MemoryEntries(max_entries=10, max_bytes=1000)
    monkeypatch.setattr(store, "_now", lambda: now[0])
    await store.put("labgate:a:1", b"1", 5)
    await store.put("labgate:a:2", b"22", 50)
    await store.put("labgate:b:1", b"333", 50)
    assert [(k.key, k.bytes, k.ttl_s) for k in await store.keys("labgate:a:*", limit=10)] == [
        ("labgate:a:1", 1, 5.0), ("labgate:a:2", 2, 50.0)]
    now[0] = 106.0
    assert await store.get("labgate:a:1") is None
    assert [k.key for k in await store.keys("labgate:*", limit=10)] == ["labgate:a:2", "labgate:b:1"]
    assert await store.delete("labgate:a:*") == 1
    assert [k.key for k in await store.keys("labgate:*", limit=10)] == ["labgate:b:1"]
    assert store.status()["entries"] == 1 and store.bytes == 3
