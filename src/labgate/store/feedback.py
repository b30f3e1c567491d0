"""Feedback on requests (``POST /v1/feedback``): votes kept beside the history records they name.

One row per vote in the ``feedback`` table (schema migration 4); a request may
have any number. Written from the gateway process with ``Store.execute`` (a
vote is rare next to requests: no queue), read with the record
(``/admin/history/{id}``) and summed per model (``/admin/analytics/feedback``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labgate.store.base import Store
from labgate.store.query import Filter
from labgate.store.schema import FEEDBACK_NAMES, FEEDBACK_TABLE, TABLE


@dataclass(frozen=True, slots=True)
class Feedback:
    """One vote, validated (server/feedback.py)."""

    feedback_id: str
    request_id: str
    timestamp: float
    score: int | None = None  # 1–5
    thumbs: int | None = None  # +1 up, -1 down
    preferred: bool | None = None  # the preferred answer of a comparison
    comment: str | None = None
    who: str | None = None
    comparison_id: str | None = None  # the runs of one comparison share it
    key_id: str | None = None  # who sent it (a hash prefix of their key)


async def add(store: Store, vote: Feedback) -> None:
    d = store.dialect
    placeholders = ", ".join(d.time_param if n == "timestamp" else "?" for n in FEEDBACK_NAMES)
    await store.execute(f"INSERT INTO {FEEDBACK_TABLE} ({', '.join(FEEDBACK_NAMES)}) VALUES ({placeholders})",
                        [getattr(vote, n) for n in FEEDBACK_NAMES])


async def record_exists(store: Store, request_id: str) -> bool:
    rows = await store.fetch(f"SELECT 1 AS found FROM {TABLE} WHERE request_id = ? LIMIT 1", [request_id])
    return bool(rows)


async def by_model(store: Store, where: Filter) -> list[dict[str, Any]]:
    """Per model (of the records voted on, filtered like any analytics): votes, mean score, thumbs, preferred."""
    clause, params = where.where(store)
    # the filter's columns are the requests table's: qualify them through a sub-select
    sql = (f"SELECT r.model AS model, count(*) AS votes, avg(f.score) AS mean_score, "
           f"count(f.score) AS scored, "
           f"sum(CASE WHEN f.thumbs > 0 THEN 1 ELSE 0 END) AS thumbs_up, "
           f"sum(CASE WHEN f.thumbs < 0 THEN 1 ELSE 0 END) AS thumbs_down, "
           f"sum(CASE WHEN f.preferred THEN 1 ELSE 0 END) AS preferred "
           f"FROM {FEEDBACK_TABLE} f JOIN (SELECT request_id, model FROM {TABLE}{clause}) r "
           f"ON r.request_id = f.request_id GROUP BY r.model ORDER BY votes DESC, model")
    rows = await store.fetch(sql, params)
    return [{k: (float(v) if k == "mean_score" and v is not None else v) for k, v in r.items()} for r in rows]
