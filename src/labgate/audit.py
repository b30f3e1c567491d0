"""The audit log: every admin action, appended to a table beside history (``audit_log``).

A row says when, who (``master:<key id>``, ``loopback:<address>`` or
``cli:<user>``), what (``key.create``, ``key.rotate``, ``key.revoke``,
``key.update``, ``config.reload``, ``cache.flush``, ...), the target and
the state before and after, with anything secret-looking masked.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from labgate.store.base import Store
from labgate.store.schema import AUDIT_TABLE

MAX_LIST = 10_000
_SECRET_FIELDS = ("key", "secret", "password", "token", "hash", "api_key")


def mask(value: Any) -> Any:
    """Values under secret-sounding names become ``***`` (recursively)."""
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and k.lower() in _SECRET_FIELDS and v is not None else mask(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


async def record_action(store: Store, actor: str, action: str, target: str | None,
                        before: Any, after: Any) -> None:
    await store.execute(
        f"INSERT INTO {AUDIT_TABLE} (ts, actor, action, target, before, after) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), actor, action, target, _json(before), _json(after)))


async def entries(store: Store, *, since: float | None = None, until: float | None = None,
                  action: str | None = None, text: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first; ``action`` matches exactly or as a prefix ending in '.' (``key.`` → every key action);
    ``until`` (exclusive) pages back: pass the oldest ``ts`` of the page before; ``text``: a substring of
    the actor, the target or the (masked) before/after states."""
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts < ?")
        params.append(until)
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in ("actor", "target", "before", "after"))
                     + ")")
        params += [pattern] * 4
    if action is not None:
        if action.endswith("."):
            where.append("substr(action, 1, ?) = ?")
            params += [len(action), action]
        else:
            where.append("action = ?")
            params.append(action)
    rows = await store.fetch(f"SELECT ts, actor, action, target, before, after FROM {AUDIT_TABLE} "
                             f"WHERE {' AND '.join(where)} ORDER BY ts DESC LIMIT ?",
                             (*params, max(1, min(limit, MAX_LIST))))
    return [{**r, "before": _parse(r["before"]), "after": _parse(r["after"])} for r in rows]


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(mask(value)).decode()


def _parse(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)
