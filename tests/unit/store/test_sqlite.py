"""The SQLite store on a real file: WAL, migrations, many writers (threads and processes), percentiles."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from labgate.record import RequestRecord
from labgate.store.capture import build_row
from labgate.store.schema import SQLITE_MIGRATIONS
from labgate.store.sqlite import SQLiteStore, percentile_cont
from labgate.store.writer import HistoryWriter

pytestmark = pytest.mark.asyncio


def rows(prefix: str, n: int) -> list[tuple[object, ...]]:
    out = []
    for i in range(n):
        r = RequestRecord(f"{prefix}-{i}", "chat", started=0.0, timestamp=1_700_000_000.0 + i)
        r.finished = 0.01
        out.append(build_row(r, capture="full", client_ip=True))
    return out


async def test_a_version_1_database_gains_client_request_id(tmp_path: Path) -> None:
    """A history file written before client_request_id existed: migration 2 adds the column, old rows keep NULL."""
    from labgate.store.query import get
    from labgate.store.schema import SQLITE_MIGRATIONS

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for statement in SQLITE_MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("CREATE TABLE history_schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO history_schema_version VALUES (1)")
        conn.execute("INSERT INTO requests (request_id, timestamp, endpoint, stream, capture, status, outcome, "
                     "cache_hit, attempts) VALUES ('old-1', 1700000000, 'chat', 0, 'metadata', 200, 'ok', 0, 1)")
    store = SQLiteStore(path)
    await store.open()
    try:
        record = RequestRecord("req_new", "chat", None, "client-9", started=0.0, timestamp=1_700_000_001.0)
        record.finished = 0.01
        await store.write([build_row(record, capture="metadata", client_ip=True)])
        old, new = await get(store, "old-1"), await get(store, "req_new")
    finally:
        await store.aclose()
    assert old is not None and new is not None
    assert (old["client_request_id"], new["client_request_id"]) == (None, "client-9")
    assert (old["cache"], old["cache_bytes"], old["trace_id"], new["trace_id"]) == (None, None, None, None)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM history_schema_version ORDER BY version").fetchall() == [
            (v,) for v in sorted(SQLITE_MIGRATIONS)]


async def test_open_creates_a_wal_file_and_migrates_once(tmp_path: Path) -> None:
    from labgate.store.schema import SQLITE_MIGRATIONS

    path = tmp_path / "sub" / "history.db"
    for _ in range(2):
        store = SQLiteStore(path)
        await store.open()
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT version FROM history_schema_version ORDER BY version").fetchall() == [
            (v,) for v in sorted(SQLITE_MIGRATIONS)]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"idx_requests_timestamp", "idx_requests_model", "idx_requests_provider",
            "idx_requests_request_id"} <= indexes


async def test_write_is_all_or_nothing(tmp_path: Path) -> None:
    """A batch spans several INSERT statements (100 rows each); one bad row rolls back all of them."""
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    good = rows("ok", 250)
    bad = [*good[:240], (None, *good[0][1:]), *good[240:]]  # request_id NOT NULL, in the third statement
    with pytest.raises(sqlite3.IntegrityError):
        await store.write(bad)
    assert await store.fetch("SELECT count(*) AS n FROM requests") == [{"n": 0}]
    await store.write(good)
    found = await store.fetch("SELECT id, request_id, timestamp FROM requests ORDER BY id")
    assert found == [{"id": i + 1, "request_id": f"ok-{i}", "timestamp": 1_700_000_000.0 + i} for i in range(250)]
    assert await store.execute("DELETE FROM requests WHERE request_id = ?", ["ok-1"]) == 1
    await store.aclose()


async def test_many_concurrent_writers_in_one_process(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    stores = [SQLiteStore(path) for _ in range(6)]
    for store in stores:
        await store.open()
    await asyncio.gather(*(s.write(rows(f"w{i}-b{b}", 50)) for i, s in enumerate(stores) for b in range(5)))
    found = await stores[0].fetch("SELECT count(*) AS n, count(DISTINCT request_id) AS d, max(id) AS top "
                                  "FROM requests")
    assert found == [{"n": 1500, "d": 1500, "top": 1500}]
    for store in stores:
        await store.aclose()


def _write_from_a_process(path: str, prefix: str) -> None:
    async def run() -> None:
        writer = HistoryWriter(SQLiteStore(path), batch_size=25, flush_interval_s=0.01)
        await writer.start()
        for i in range(300):
            r = RequestRecord(f"{prefix}-{i}", "chat", started=0.0)
            r.finished = 0.001
            writer.put(r)
            if i % 50 == 0:
                await asyncio.sleep(0)
        await writer.close()

    asyncio.run(run())


async def test_many_writer_processes_share_one_file(tmp_path: Path) -> None:
    """Like ``serve --workers 4``: each worker has its own writer on the same file."""
    path = str(tmp_path / "h.db")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_from_a_process, args=(path, f"p{i}")) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone() == (1200, 1200)
        assert conn.execute("SELECT count(*) FROM requests WHERE request_id LIKE 'p3-%'").fetchone() == (300,)


async def test_percentile_cont_is_postgres_percentile_cont(tmp_path: Path) -> None:
    assert percentile_cont([], 0.5) is None
    assert percentile_cont([7.0], 0.99) == 7.0
    assert percentile_cont([40.0, 10.0, 30.0, 20.0], 0.5) == 25.0
    assert percentile_cont([10.0, 20.0, 30.0, 40.0], 0.9) == pytest.approx(37.0)
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    found = await store.fetch("SELECT percentile_cont(v, 0.25) AS q FROM (SELECT 1.0 AS v UNION ALL SELECT 3.0 "
                              "UNION ALL SELECT NULL UNION ALL SELECT 5.0)")
    assert found == [{"q": 2.0}]
    await store.aclose()


async def test_a_version_1_database_gains_the_cache_columns(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:  # a history file written before migration 2 existed
        conn.execute("CREATE TABLE history_schema_version (version INTEGER NOT NULL)")
        for statement in SQLITE_MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO history_schema_version (version) VALUES (1)")
    store = SQLiteStore(path)
    await store.open()
    await store.write([build_row(RequestRecord("after", "chat"), capture="metadata", client_ip=True)])
    await store.aclose()
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
        assert columns[-4:] == ["cache", "cache_bytes", "trace_id", "routing"]  # migrations 3, 6 and 7
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(requests)")}
        assert "idx_requests_trace_id" in indexes
        assert conn.execute("SELECT max(version) FROM history_schema_version").fetchone() == (max(SQLITE_MIGRATIONS),)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"api_keys", "audit_log"} <= tables  # migration 5: virtual keys and the audit log
        assert conn.execute("SELECT request_id, cache FROM requests").fetchall() == [("after", None)]


async def test_opening_waits_while_another_process_holds_a_fresh_file_locked(tmp_path: Path) -> None:
    """``PRAGMA journal_mode=WAL`` does not wait on SQLite's busy timeout: two workers (or a gateway and
    its history writer) opening a new file at once saw "database is locked" and failed to start."""
    path = tmp_path / "h.db"
    locked, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold() -> None:  # another process creating the file, in rollback-journal mode, mid-transaction
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # a writer: readers may read, nobody may change the journal mode
        conn.execute("CREATE TABLE other (x)")
        loop.call_soon_threadsafe(locked.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
        conn.execute("COMMIT")
        conn.close()

    holder = loop.run_in_executor(None, hold)
    await locked.wait()
    store = SQLiteStore(path, busy_timeout_s=10)
    opening = asyncio.create_task(store.open())
    await asyncio.sleep(0.2)  # it must be waiting, not failed
    assert not opening.done() or opening.exception() is None
    release.set()
    await holder
    await opening
    try:
        assert (await store.fetch("PRAGMA journal_mode"))[0]["journal_mode"] == "wal"
    finally:
        await store.aclose()
