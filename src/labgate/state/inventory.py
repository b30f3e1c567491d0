"""What the cache holds, for operators: per-namespace statistics, key listings, flushes.

Used by ``/admin/cache/*`` (over the running gateway's backend, with its
hit/miss counts) and by ``labgate cache --redis URL`` (straight to Redis,
entries only). Only keys shaped like cache entries (``labgate:{namespace}:``
and a 32-hex-digit hash) are listed or deleted, so other state kept under
``labgate:`` is never touched.
"""

from __future__ import annotations

import re
from typing import Any

from labgate.config.schema.cache import NAMESPACE_PATTERN
from labgate.state.base import EntryStore
from labgate.state.cache import Counts
from labgate.state.keys import key_glob

SCAN_LIMIT = 20_000  # keys one stats call reads by default (it runs on a serving process); past it: lower bounds
MAX_SCAN_LIMIT = 1_000_000
MAX_LIST = 10_000  # keys one listing may return
_NAMESPACE = re.compile(NAMESPACE_PATTERN)
_PATTERN = re.compile(r"^[A-Za-z0-9*?\[\]\-]{1,64}$")  # a glob over a key's hash part


def check_namespace(namespace: str | None) -> str | None:
    """``namespace`` if it is a valid one (or None); ValueError otherwise."""
    if namespace is not None and not _NAMESPACE.match(namespace):
        raise ValueError(f"namespace must match {NAMESPACE_PATTERN}; got {namespace[:80]!r}")
    return namespace


def check_pattern(pattern: str | None) -> str | None:
    if pattern is not None and not _PATTERN.match(pattern):
        raise ValueError("pattern is a glob over the key's hash (letters, digits, * ? [ ] -), "
                         f"at most 64 characters; got {pattern[:80]!r}")
    return pattern


async def stats(entries: EntryStore, counts: dict[str, Counts] | None = None, *,
                limit: int = SCAN_LIMIT) -> dict[str, Any]:
    """Entries and bytes per namespace (plus this process's hit/miss counts when given)."""
    infos = await entries.keys(key_glob(None), limit=limit)
    namespaces: dict[str, dict[str, Any]] = {}
    for info in infos:
        ns = info.key.split(":", 2)[1]
        slot = namespaces.setdefault(ns, {"entries": 0, "bytes": 0})
        slot["entries"] += 1
        slot["bytes"] += info.bytes
    for ns, count in (counts or {}).items():
        namespaces.setdefault(ns, {"entries": 0, "bytes": 0}).update(count.as_dict())
    total: dict[str, Any] = {"entries": len(infos), "bytes": sum(i.bytes for i in infos)}
    if counts:
        hits = sum(c.hits for c in counts.values())
        looked = hits + sum(c.misses for c in counts.values())
        total.update(hits=hits, misses=looked - hits, hit_rate=round(hits / looked, 4) if looked else None,
                     saved_tokens=sum(c.saved_prompt_tokens + c.saved_completion_tokens for c in counts.values()))
    return {"backend": entries.status(), "namespaces": dict(sorted(namespaces.items())), "total": total,
            "truncated": len(infos) >= limit}


async def keys(entries: EntryStore, *, namespace: str | None = None, pattern: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
    infos = await entries.keys(key_glob(check_namespace(namespace), check_pattern(pattern)),
                               limit=min(limit, MAX_LIST))
    return [{"key": i.key, "namespace": i.key.split(":", 2)[1], "bytes": i.bytes, "ttl_s": i.ttl_s}
            for i in sorted(infos, key=lambda i: i.key)]


async def flush(entries: EntryStore, *, namespace: str | None = None) -> int:
    """Delete the cache entries of ``namespace`` (every namespace if None); returns how many."""
    return await entries.delete(key_glob(check_namespace(namespace)))
