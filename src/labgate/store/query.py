"""Finding records: search filters, one record by id, and a paged walk for export.

Shared by the admin API and the CLI; written once for both stores (``?``
placeholders, dialect fragments from the store).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from labgate.store.base import Store
from labgate.store.schema import BOOL_COLUMNS, FEEDBACK_NAMES, FEEDBACK_TABLE, JSON_COLUMNS, NAMES, TABLE

SUMMARY = ("id", "request_id", "timestamp", "endpoint", "key_id", "model", "provider", "deployment",
           "stream", "status", "outcome", "error_type", "response_time_ms", "ttft_ms", "prompt_tokens",
           "completion_tokens", "tokens_used", "cost", "cache_hit", "prompt", "client_request_id", "trace_id")
ALL = ("id", *NAMES)
OUTCOMES = ("ok", "error", "stream_error", "client_disconnected")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class Filter:
    """Which records: every field that is set must match."""

    model: str | None = None
    provider: str | None = None
    status: str | None = None  # "200", "5xx", or an outcome: ok | error | stream_error | client_disconnected
    text: str | None = None  # substring of the messages or the response (case-insensitive)
    since: float | None = None  # Unix seconds, inclusive
    until: float | None = None  # Unix seconds, exclusive
    key: str | None = None  # key id (key-…)
    endpoint: str | None = None
    client_request_id: str | None = None  # the client's x-request-id (several records may share one)
    trace_id: str | None = None  # the W3C trace id, 32 hex digits (any case)

    def where(self, store: Store) -> tuple[str, list[Any]]:
        """The ``WHERE`` clause (or "") and its parameters."""
        d = store.dialect
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("model", self.model), ("provider", self.provider), ("key_id", self.key),
                              ("endpoint", self.endpoint), ("client_request_id", self.client_request_id),
                              ("trace_id", None if self.trace_id is None else self.trace_id.strip().lower())):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.status is not None:
            clause, values = _status(self.status)
            clauses.append(clause)
            params.extend(values)
        if self.text:
            pattern = "%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append(f"(CAST(messages AS TEXT) {d.like} ? ESCAPE '\\' OR response {d.like} ? ESCAPE '\\')")
            params += [pattern, pattern]
        if self.since is not None:
            clauses.append(f"timestamp >= {d.time_param}")
            params.append(float(self.since))
        if self.until is not None:
            clauses.append(f"timestamp < {d.time_param}")
            params.append(float(self.until))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _status(given: str) -> tuple[str, list[Any]]:
    given = given.strip().lower()
    if given.isdigit():
        return "status = ?", [int(given)]
    if len(given) == 3 and given[0].isdigit() and given[1:] == "xx":
        low = int(given[0]) * 100
        return "status >= ? AND status < ?", [low, low + 100]
    if given in OUTCOMES:
        return "outcome = ?", [given]
    raise ValueError(f"status must be an HTTP status (200), a class (5xx) or one of {', '.join(OUTCOMES)}; "
                     f"got {given!r}")


def parse_time(given: str, *, now: float | None = None) -> float:
    """Unix seconds from ``1700000000``, ISO 8601 (``2025-01-31``, ``…T10:00:00Z``; UTC if no zone)
    or an age (``90s``, ``15m``, ``2h``, ``7d``, ``1w``: that long ago)."""
    text = given.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return (time.time() if now is None else now) - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {given!r} (use ISO 8601, Unix seconds, or an age like 2h or 7d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(ts: float | None) -> str | None:
    """Unix seconds → ``2025-01-31T10:00:00.123Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode(row: dict[str, Any]) -> dict[str, Any]:
    """A fetched row as the API shows it: JSON columns parsed, flags as booleans, ISO timestamps."""
    out = dict(row)
    for name, value in row.items():
        if name in JSON_COLUMNS and isinstance(value, str):
            out[name] = orjson.loads(value)
        elif name in BOOL_COLUMNS and value is not None:
            out[name] = bool(value)
    if "timestamp" in out:
        out["timestamp"] = iso(out["timestamp"])
    return out


async def search(store: Store, where: Filter, *, limit: int = 50, offset: int = 0,
                 columns: tuple[str, ...] = SUMMARY) -> list[dict[str, Any]]:
    """Matching records, newest first."""
    clause, params = where.where(store)
    sql = (f"SELECT {', '.join(columns)} FROM {TABLE}{clause} ORDER BY timestamp DESC, id DESC "
           f"LIMIT {int(limit)} OFFSET {int(offset)}")
    return [decode(row) for row in await store.fetch(sql, params)]


async def count(store: Store, where: Filter) -> int:
    clause, params = where.where(store)
    rows = await store.fetch(f"SELECT count(*) AS n FROM {TABLE}{clause}", params)
    return int(rows[0]["n"])


async def get(store: Store, ident: str) -> dict[str, Any] | None:
    """One whole record, by labgate's request id or by row id (never by a client's ``x-request-id``:
    labgate's ids are its own and unique; a client's is ``client_request_id``, a search filter)."""
    columns = ", ".join(ALL)
    rows = await store.fetch(f"SELECT {columns} FROM {TABLE} WHERE request_id = ? ORDER BY id DESC LIMIT 1",
                             [ident])
    if not rows and ident.isdigit():
        rows = await store.fetch(f"SELECT {columns} FROM {TABLE} WHERE id = ?", [int(ident)])
    return decode(rows[0]) if rows else None


async def feedback(store: Store, request_id: str) -> list[dict[str, Any]]:
    """Every vote on one request (``POST /v1/feedback``), oldest first."""
    rows = await store.fetch(f"SELECT {', '.join(FEEDBACK_NAMES)} FROM {FEEDBACK_TABLE} WHERE request_id = ? "
                             "ORDER BY id", [request_id])
    out = []
    for row in rows:
        vote = dict(row)
        vote["timestamp"] = iso(row["timestamp"])
        if vote["preferred"] is not None:
            vote["preferred"] = bool(vote["preferred"])
        out.append(vote)
    return out


async def walk(store: Store, where: Filter, *, page: int = 1000) -> AsyncIterator[dict[str, Any]]:
    """Every matching record, oldest first, fetched a page at a time (for export)."""
    clause, params = where.where(store)
    joiner = " AND " if clause else " WHERE "
    last = 0
    while True:
        rows = await store.fetch(f"SELECT {', '.join(ALL)} FROM {TABLE}{clause}{joiner}id > ? "
                                 f"ORDER BY id LIMIT {int(page)}", [*params, last])
        for row in rows:
            yield decode(row)
        if len(rows) < page:
            return
        last = rows[-1]["id"]
