"""The ``feedback`` table (migration 4) and the migration rule that applies every missing version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from labgate.store.feedback import Feedback, add
from labgate.store.query import feedback
from labgate.store.schema import FEEDBACK_VERSION, SQLITE_MIGRATIONS
from labgate.store.sqlite import SQLiteStore

pytestmark = pytest.mark.asyncio


async def test_a_gap_below_the_highest_applied_version_is_still_filled(tmp_path: Path) -> None:
    """Branches add migrations in parallel and merge in any order: a database that already holds a
    higher version (applied by a build that had it) must still get the lower one it lacks."""
    path = tmp_path / "h.db"
    with sqlite3.connect(path) as conn:
        for version in (1, 2):
            for statement in SQLITE_MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute("CREATE TABLE history_schema_version (version INTEGER NOT NULL)")
        conn.executemany("INSERT INTO history_schema_version VALUES (?)", [(1,), (2,), (FEEDBACK_VERSION + 50,)])
    store = SQLiteStore(path)
    await store.open()
    try:
        await add(store, Feedback("fb_1", "req_a", 1_700_000_000.0, score=5, preferred=True, comment="ok"))
        votes = await feedback(store, "req_a")
    finally:
        await store.aclose()
    assert [(v["feedback_id"], v["score"], v["preferred"], v["timestamp"]) for v in votes] == [
        ("fb_1", 5, True, "2023-11-14T22:13:20.000Z")]
    with sqlite3.connect(path) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM history_schema_version ORDER BY version")]
    assert versions == [*sorted(SQLITE_MIGRATIONS), FEEDBACK_VERSION + 50]
