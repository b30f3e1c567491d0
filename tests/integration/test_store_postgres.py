"""The PostgreSQL store on the real server: migrations under concurrency, many writers, what PostgreSQL refuses."""

from __future__ import annotations

import asyncio

import pytest

from labgate.record import RequestRecord
from labgate.store.capture import build_row
from labgate.store.postgres import PostgresStore
from labgate.store.writer import HistoryWriter

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def record(rid: str, **fields: object) -> RequestRecord:
    r = RequestRecord(rid, "chat", "127.0.0.1", started=0.0, timestamp=1_700_000_000.123456)
    r.finished = 0.25
    for name, value in fields.items():
        setattr(r, name, value)
    return r


async def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(5)]
    await asyncio.gather(*(s.open() for s in stores))
    from labgate.store.schema import POSTGRES_MIGRATIONS

    assert await stores[0].fetch("SELECT version FROM history_schema_version ORDER BY version") == [
        {"version": v} for v in sorted(POSTGRES_MIGRATIONS)]
    indexes = await stores[0].fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'requests' "
                                    "AND schemaname = current_schema() ORDER BY indexname")
    assert [i["indexname"] for i in indexes] == ["idx_requests_model", "idx_requests_provider",
                                                 "idx_requests_request_id", "idx_requests_timestamp",
                                                 "idx_requests_trace_id", "requests_pkey"]
    await asyncio.gather(*(s.aclose() for s in stores))
    again = PostgresStore(pg_url)
    await again.open()  # already migrated: nothing to do
    assert await again.fetch("SELECT count(*) AS n FROM history_schema_version") == [{"n": len(POSTGRES_MIGRATIONS)}]
    await again.aclose()


async def test_a_version_1_table_gains_client_request_id(pg_url: str) -> None:
    """A table created before client_request_id existed: migration 2 adds the column, old rows keep NULL."""
    import asyncpg

    from labgate.store.query import get
    from labgate.store.schema import POSTGRES_MIGRATIONS

    conn = await asyncpg.connect(pg_url)
    try:
        for statement in POSTGRES_MIGRATIONS[1]:
            await conn.execute(statement)
        await conn.execute("CREATE TABLE history_schema_version (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO history_schema_version VALUES (1)")
        await conn.execute("INSERT INTO requests (request_id, timestamp, endpoint, stream, capture, status, outcome, "
                           "cache_hit, attempts) VALUES ('old-1', now(), 'chat', false, 'metadata', 200, 'ok', "
                           "false, 1)")
    finally:
        await conn.close()
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await store.write([build_row(record("req_new", client_request_id="client-9"), capture="metadata",
                                     client_ip=True)])
        old, new = await get(store, "old-1"), await get(store, "req_new")
        versions = await store.fetch("SELECT version FROM history_schema_version ORDER BY version")
    finally:
        await store.aclose()
    assert (old["client_request_id"], new["client_request_id"]) == (None, "client-9")
    assert (old["cache"], new["cache"], old["cache_bytes"]) == (None, None, None)  # migration 3 (the cache)
    assert (old["trace_id"], new["trace_id"]) == (None, None)  # migration 6 (the trace id)
    assert versions == [{"version": v} for v in sorted(POSTGRES_MIGRATIONS)]


async def test_many_concurrent_writers(pg_url: str) -> None:
    writers = [HistoryWriter(PostgresStore(pg_url), batch_size=40, flush_interval_s=0.01) for _ in range(8)]
    for writer in writers:
        await writer.start()

    async def feed(i: int, writer: HistoryWriter) -> None:
        for n in range(250):
            writer.put(record(f"w{i}-{n}"))
            if n % 25 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(feed(i, w) for i, w in enumerate(writers)))
    for writer in writers:
        await writer.close()
    check = PostgresStore(pg_url)
    await check.open()
    assert await check.fetch("SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM requests") == [
        {"n": 2000, "d": 2000}]
    assert sum(w.written for w in writers) == 2000
    await check.aclose()


async def test_rows_round_trip_and_a_batch_is_all_or_nothing(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    row = build_row(record("r1", payload={"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
                    capture="full", client_ip=True)
    with pytest.raises(Exception, match="null value"):
        await store.write([row, (None, *row[1:])])
    assert await store.fetch("SELECT count(*) AS n FROM requests") == [{"n": 0}]
    await store.write([row])
    found = await store.fetch("SELECT request_id, timestamp, messages, stream, cache_hit FROM requests")
    assert found == [{"request_id": "r1", "timestamp": 1_700_000_000.123456,
                      "messages": '[{"role": "user", "content": "hi"}]', "stream": False, "cache_hit": False}]
    assert await store.execute("DELETE FROM requests WHERE request_id = ?", ["r1"]) == 1
    await store.aclose()


async def test_nul_characters_are_replaced_not_refused(pg_url: str) -> None:
    """SQLite stores NUL; PostgreSQL text and jsonb cannot: the row goes in with U+FFFD instead."""
    store = PostgresStore(pg_url)
    await store.open()
    payload = {"model": "m", "messages": [{"role": "user", "content": "a\x00b"}]}
    rows = [build_row(record("nul", payload=payload, reply=b'{"choices":[{"message":{"content":"x\\u0000y"}}]}'),
                      capture="full", client_ip=True),
            build_row(record("plain"), capture="full", client_ip=True)]
    await store.write(rows)
    found = await store.fetch("SELECT request_id, messages::text AS m, response, prompt FROM requests ORDER BY id")
    assert found == [{"request_id": "nul", "m": '[{"role": "user", "content": "a\ufffdb"}]', "response": "x\ufffdy",
                      "prompt": "a\ufffdb"},
                     {"request_id": "plain", "m": None, "response": None, "prompt": None}]
    await store.aclose()



async def test_sessions_are_named_labgate_in_pg_stat_activity(pg_url: str) -> None:
    """An operator can tell labgate's connections apart (and a URL that names them wins)."""
    sql = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    for url, expected in ((pg_url, "labgate"),
                          (pg_url + ("&" if "?" in pg_url else "?") + "application_name=lab-east", "lab-east")):
        store = PostgresStore(url)
        await store.open()
        try:
            assert await store.fetch(sql) == [{"application_name": expected}]
        finally:
            await store.aclose()
