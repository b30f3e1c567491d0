"""In-process state: the embedded default, with no services to run.

:class:`MemoryEntries` is an LRU of cache entries bounded by count and by
bytes, with a time to live per entry. Every operation is a few dictionary
steps on the event loop's thread, so nothing is locked. Each process (each
of ``--workers N``) has its own entries; Redis shares them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from fnmatch import fnmatchcase

from labgate.state.base import KeyInfo


class MemoryEntries:
    """An :class:`~labgate.state.base.EntryStore` in this process: LRU by entries and bytes."""

    backend = "memory"

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._now = time.monotonic
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key → (expires, value)
        self.same_bytes = True  # get() returns the very object put (the cache reuses its decoding by identity)

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    def get_now(self, key: str) -> bytes | None:
        """``get`` without a coroutine (the cache's hit path calls it directly)."""
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self._now():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item[1]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.put_now(key, value, ttl_s)

    def put_now(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (self._now() + ttl_s, value)
        self.bytes += len(value)
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._items))
            self._drop(oldest)
            self.evictions += 1

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(value)

    def _live(self, pattern: str) -> list[tuple[str, float, bytes]]:
        now = self._now()
        for key in [k for k, (expires, _) in self._items.items() if expires <= now]:
            self._drop(key)
        return [(k, e, v) for k, (e, v) in self._items.items() if fnmatchcase(k, pattern)]

    async def keys(self, pattern: str, *, limit: int) -> list[KeyInfo]:
        now = self._now()
        return [KeyInfo(k, len(v), round(e - now, 3)) for k, e, v in self._live(pattern)[:limit]]

    async def delete(self, pattern: str) -> int:
        live = self._live(pattern)
        for key, _, _ in live:
            self._drop(key)
        return len(live)

    def status(self) -> dict[str, object]:
        return {"backend": self.backend, "up": True, "entries": len(self._items), "bytes": self.bytes,
                "max_entries": self.max_entries, "max_bytes": self.max_bytes, "evictions": self.evictions}

    async def aclose(self) -> None:
        self._items.clear()
        self.bytes = 0
