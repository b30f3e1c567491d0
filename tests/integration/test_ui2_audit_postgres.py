"""The audit log's search (``q``) and pages (``until``) on PostgreSQL (``DATABASE_URL``; skips when unreachable)."""

from __future__ import annotations

import pytest

from labgate import audit
from labgate.keys import KeyAdmin, KeySpec
from labgate.store.postgres import PostgresStore

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_audit_search_and_pages(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        admin = KeyAdmin(store)
        for name in ("ui2-pg_1", "ui2-pg%2", "ui2-pgx3"):
            await admin.create(KeySpec(name=name), actor="test")
        found = await audit.entries(store, action="key.create", text="ui2-pg")
        assert [e["after"]["name"] for e in found] == ["ui2-pgx3", "ui2-pg%2", "ui2-pg_1"]
        assert [e["after"]["name"] for e in await audit.entries(store, text="ui2-pg_")] == ["ui2-pg_1"]
        assert [e["after"]["name"] for e in await audit.entries(store, text="ui2-pg%")] == ["ui2-pg%2"]
        older = await audit.entries(store, action="key.create", text="ui2-pg", until=found[0]["ts"], limit=1)
        assert [e["after"]["name"] for e in older] == ["ui2-pg%2"]
    finally:
        await store.aclose()
