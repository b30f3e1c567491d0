"""History queries against a Python reference, on random data sets and random filters (hypothesis).

test_store_queries.py checks hand-computed values on one fixed data set; here hypothesis draws the
records (models, providers, keys, statuses, outcomes, times with ties, tokens, costs, latencies,
texts with ``%`` and ``_``) and the filter, and ``query.search``/``query.count``/``analytics.summary``
must agree with a few lines of plain Python over the same records: on SQLite always, on PostgreSQL
(marked ``integration``) too. Texts use ASCII letters only, so "case-insensitive" means the same
thing to SQLite's LIKE, PostgreSQL's ILIKE and ``str.lower``.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgate.store import analytics, query, store_for
from labgate.store.base import Store
from labgate.store.schema import NAMES

T0 = 1735725600.0
DEFAULTS: dict[str, Any] = {**dict.fromkeys(NAMES), "endpoint": "chat", "stream": False, "capture": "full",
                            "status": 200, "outcome": "ok", "cache_hit": False, "attempts": 1}
TEXT = st.text(alphabet="xyzXYZ%_ ", max_size=6)
STATUS_OUTCOME = st.sampled_from([(200, "ok"), (200, "stream_error"), (401, "error"), (429, "error"),
                                  (499, "client_disconnected"), (502, "error")])


@st.composite
def records(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for n in range(draw(st.integers(0, 14))):
        status, outcome = draw(STATUS_OUTCOME)
        pt, ct = draw(st.one_of(st.none(), st.integers(0, 500))), draw(st.one_of(st.none(), st.integers(0, 500)))
        ask, answer = draw(st.one_of(st.none(), TEXT)), draw(st.one_of(st.none(), TEXT))
        out.append({**DEFAULTS, "request_id": f"req-{n}", "timestamp": T0 + draw(st.integers(0, 20)) * 600,
                    "model": draw(st.sampled_from(["m-a", "m-b", None])),
                    "provider": draw(st.sampled_from(["p1", "p2", None])),
                    "key_id": draw(st.sampled_from(["key-1", "key-2", None])),
                    "status": status, "outcome": outcome,
                    "response_time_ms": float(draw(st.integers(1, 5000))),
                    "prompt_tokens": pt, "completion_tokens": ct,
                    "tokens_used": pt + ct if pt is not None and ct is not None else None,
                    # quarters: sums are exact in binary floating point on both databases
                    "cost": draw(st.one_of(st.none(), st.integers(0, 40).map(lambda q: q / 4))),
                    "messages": orjson.dumps([{"role": "user", "content": ask}]).decode() if ask is not None else None,
                    "response": answer})
    return out


FILTERS = st.builds(
    query.Filter,
    model=st.sampled_from([None, "m-a", "m-b"]), provider=st.sampled_from([None, "p1", "p2"]),
    key=st.sampled_from([None, "key-1", "key-2"]),
    status=st.sampled_from([None, "200", "401", "4xx", "5xx", "ok", "error", "stream_error", "client_disconnected"]),
    text=st.one_of(st.none(), st.text(alphabet="xyzXYZ%_", min_size=1, max_size=3)),
    since=st.one_of(st.none(), st.integers(0, 20).map(lambda k: T0 + k * 600)),
    until=st.one_of(st.none(), st.integers(0, 20).map(lambda k: T0 + k * 600)))


def matches(r: dict[str, Any], f: query.Filter) -> bool:
    """The reference: what each field of a Filter means (store/query.py's docstrings)."""
    if any(value is not None and r[column] != value
           for column, value in (("model", f.model), ("provider", f.provider), ("key_id", f.key))):
        return False
    if f.status is not None:
        if f.status.isdigit() and r["status"] != int(f.status):
            return False
        if f.status.endswith("xx") and r["status"] // 100 != int(f.status[0]):
            return False
        if f.status in query.OUTCOMES and r["outcome"] != f.status:
            return False
    if f.text:
        content = orjson.loads(r["messages"])[0]["content"] if r["messages"] is not None else None
        if not any(t is not None and f.text.lower() in t.lower() for t in (content, r["response"])):
            return False
    if f.since is not None and r["timestamp"] < f.since:
        return False
    return not (f.until is not None and r["timestamp"] >= f.until)


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def percentile(values: list[float], f: float) -> float | None:
    """PostgreSQL's percentile_cont: position (n - 1) * f among the sorted values, linear between ranks."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * f
    low, high = math.floor(pos), math.ceil(pos)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (pos - low), 3)


def expected_summary(chosen: list[dict[str, Any]]) -> dict[str, Any]:
    def total(field: str) -> int:
        return sum(r[field] or 0 for r in chosen)

    outcomes = Counter(r["outcome"] for r in chosen)
    costs = [r["cost"] for r in chosen if r["cost"] is not None]
    models = Counter(r["model"] for r in chosen)
    tokens_by_model = Counter()
    for r in chosen:
        tokens_by_model[r["model"]] += r["tokens_used"] or 0
    latencies = [r["response_time_ms"] for r in chosen]
    return {
        "requests": len(chosen), "outcomes": dict(sorted(outcomes.items())),
        "error_rate": ratio(outcomes["error"] + outcomes["stream_error"], len(chosen)),
        "tokens": {"prompt_tokens": total("prompt_tokens"), "completion_tokens": total("completion_tokens"),
                   "total_tokens": total("tokens_used"), "cost": round(sum(costs), 6) if costs else None},
        "models": [{"model": m, "requests": n, "total_tokens": tokens_by_model[m]}
                   for m, n in sorted(models.items(), key=lambda item: (-item[1], item[0] or ""))],
        "p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95),
    }


async def check(store: Store, data: list[dict[str, Any]], where: query.Filter) -> None:
    await store.write([tuple(r[name] for name in NAMES) for r in data])
    # newest first; equal times: the later insert first (ids grow with inserts)
    chosen = [r for r in reversed(data) if matches(r, where)]
    chosen.sort(key=lambda r: -r["timestamp"])  # stable: ties keep the later-insert-first order
    found = await query.search(store, where, limit=100)
    assert ([r["request_id"] for r in found], await query.count(store, where)) == (
        [r["request_id"] for r in chosen], len(chosen))
    summary = await analytics.summary(store, where)
    got = {k: summary[k] for k in ("requests", "outcomes", "error_rate", "tokens", "models")}
    got |= {"p50_ms": summary["latency"]["p50_ms"], "p95_ms": summary["latency"]["p95_ms"]}
    assert got == expected_summary(chosen)


SUPPRESS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@settings(max_examples=60, deadline=None, suppress_health_check=SUPPRESS)
@given(data=records(), where=FILTERS)
def test_sqlite_queries_agree_with_the_reference(data: list[dict[str, Any]], where: query.Filter) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = store_for(str(Path(directory) / "h.db"))

        async def run() -> None:
            await store.open()
            try:
                await check(store, data, where)
            finally:
                await store.aclose()

        asyncio.run(run())


@pytest.mark.integration
@settings(max_examples=25, deadline=None, suppress_health_check=SUPPRESS)
@given(data=records(), where=FILTERS)
def test_postgres_queries_agree_with_the_reference(pg_url: str, data: list[dict[str, Any]],
                                                   where: query.Filter) -> None:
    # a schema per example: pg_url's own schema is per test, and ids must start afresh
    base, _, _ = pg_url.partition("?")
    schema = f"labgate_prop_{uuid.uuid4().hex[:12]}"

    async def run() -> None:
        import asyncpg

        admin = await asyncpg.connect(base, timeout=10)
        try:
            await admin.execute(f"CREATE SCHEMA {schema}")
            store = store_for(f"{base}?search_path={schema}")
            await store.open()
            try:
                await check(store, data, where)
            finally:
                await store.aclose()
        finally:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await admin.close()

    asyncio.run(run())
