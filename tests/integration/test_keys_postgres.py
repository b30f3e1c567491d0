"""Virtual keys, the audit log and the cost report on PostgreSQL (``DATABASE_URL``; skips when unreachable)."""

from __future__ import annotations

import time

import pytest

from labgate import audit
from labgate.cli.cost import spend
from labgate.keys import KeyAdmin, KeyRing, KeySpec
from labgate.record import RequestRecord
from labgate.store.capture import build_row
from labgate.store.postgres import PostgresStore

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_keys_audit_and_cost_report(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    ring = KeyRing(PostgresStore(pg_url), refresh_s=0.05)
    await ring.start()
    try:
        admin = KeyAdmin(store)
        secret, key = await admin.create(KeySpec(name="pg", project="lab", models=("m*",), budget_usd=5.0),
                                         actor="test")
        await ring.refresh()
        assert ring.check(secret, time.time()) == key
        await admin.update("pg", KeySpec(rpm=10), actor="test")
        await admin.revoke(key.id, actor="test")
        await ring.refresh()
        with pytest.raises(Exception, match="revoked"):
            ring.check(secret, time.time())
        entries = await audit.entries(store, action="key.")
        assert [e["action"] for e in entries] == ["key.revoke", "key.update", "key.create"]
        assert entries[1]["after"]["rpm"] == 10
        rows = []
        for n, cost in enumerate((0.25, 0.5)):
            record = RequestRecord(f"r{n}", "chat", timestamp=time.time())
            record.finished, record.model, record.provider, record.key_id, record.cost = 0.01, "m", "p", key.id, cost
            rows.append(build_row(record, capture="metadata", client_ip=True))
        await store.write(rows)
        report = await spend(store, by="project", since=time.time() - 60)
        assert report == [{"project": "lab", "requests": 2, "prompt_tokens": 0, "completion_tokens": 0,
                           "cost_usd": 0.75, "unpriced": 0}]
        assert (await spend(store, by="day"))[0]["cost_usd"] == 0.75
    finally:
        await ring.aclose()
        await store.aclose()
