"""Search, show, export and every analytics query, on both stores, against hand-computed values.

The fixed data set below (11 requests over two days) is written straight
into a fresh store (a SQLite file; a PostgreSQL schema, marked
``integration``); each expected value in this file was worked out by hand
from the table, not by running the query. Percentiles are PostgreSQL's
``percentile_cont``: for n sorted values, position (n - 1) × f, linear
interpolation between the two closest ranks.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from labgate.store import analytics, query, store_for
from labgate.store.base import Store
from labgate.store.export import export
from labgate.store.schema import NAMES
from labgate.store.writer import HistoryWriter

T0 = 1735725600.0  # 2025-01-01T10:00:00Z
H10, H11, H12 = "2025-01-01T10:00:00.000Z", "2025-01-01T11:00:00.000Z", "2025-01-01T12:00:00.000Z"
DAY2_H11 = "2025-01-02T11:00:00.000Z"
K1, K2 = "key-aaa", "key-bbb"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
DEFAULTS: dict[str, Any] = {**dict.fromkeys(NAMES), "endpoint": "chat", "stream": False, "capture": "full",
                            "status": 200, "outcome": "ok", "cache_hit": False, "attempts": 1}


def row(n: int, at: float, model: str | None, provider: str | None, key: str | None, *, stream: bool = False,
        status: int = 200, outcome: str = "ok", error_type: str | None = None, latency: float,
        ttft: float | None, pt: int | None = None, ct: int | None = None, cost: float | None = None,
        cache: bool = False, ask: str | None = None, prompt: str | None = None,
        answer: str | None = None, trace: str | None = None) -> tuple[Any, ...]:
    fields = {**DEFAULTS, "request_id": f"req-{n}", "timestamp": T0 + at, "model": model, "provider": provider,
              "deployment": f"{provider}/{model}" if provider else None, "key_id": key, "stream": stream,
              "status": status, "outcome": outcome, "error_type": error_type,
              "error": f"{error_type} happened" if error_type else None, "response_time_ms": latency,
              "ttft_ms": ttft, "prompt_tokens": pt, "completion_tokens": ct,
              "tokens_used": pt + ct if pt is not None and ct is not None else None, "cost": cost, "cache_hit": cache,
              "messages": orjson.dumps([{"role": "user", "content": ask}]).decode() if ask else None,
              "prompt": prompt, "response": answer, "capture": "full" if ask else "metadata", "trace_id": trace}
    assert set(fields) == set(NAMES)
    return tuple(fields[name] for name in NAMES)


# n, at, model, provider, key, …   (R8: an auth failure, R10: stored with capture metadata)
DATA = [
    row(1, 0, "m-a", "p1", K1, latency=100, ttft=100, pt=10, ct=20, cost=0.01,
        ask="Hello World", prompt="hello world", answer="Hi there"),
    row(2, 60, "m-a", "p1", K1, stream=True, latency=200, ttft=50, pt=10, ct=30, cost=0.02,
        ask="hello world", prompt="hello world", answer="Greetings"),
    row(3, 120, "m-a", "p1", K2, stream=True, outcome="stream_error", error_type="upstream_connection_error",
        latency=300, ttft=70, pt=5, ct=3, ask="Tell me a joke", prompt="tell me a joke", answer="Why did"),
    row(4, 1800, "m-b", "p2", K1, latency=400, ttft=400, pt=20, ct=40, cost=0.04, cache=True,
        ask="HELLO   world", prompt="hello world", answer="Hey"),
    row(5, 3599, "m-b", "p2", K2, status=502, outcome="error", error_type="all_attempts_failed", latency=500,
        ttft=None, ask="Tell me a joke", prompt="tell me a joke"),
    row(6, 3600, "m-a", "p1", K1, latency=150, ttft=150, pt=8, ct=12, cost=0.005, cache=True,
        ask="Summarize this: the cat sat", prompt="summarize this", answer="A cat sat."),
    row(7, 3700, "m-b", "p2", K2, stream=True, status=499, outcome="client_disconnected", latency=250, ttft=30,
        ask="hello world", prompt="hello world", answer="Hel"),
    row(8, 4000, None, None, None, status=401, outcome="error", error_type="invalid_api_key", latency=1, ttft=None),
    row(9, 7200, "m-a", "p2", K1, stream=True, latency=600, ttft=90, pt=12, ct=50, cost=0.03,
        ask="Summarize this", prompt="summarize this", answer="Summary: Paris 100%", trace=TRACE),
    row(10, 7300, "m-b", "p1", K2, status=429, outcome="error", error_type="rate_limit_exceeded", latency=50,
        ttft=None),
    row(11, 90000, "m-a", "p1", K1, latency=120, ttft=120, pt=6, ct=6, cost=0.001, cache=True,
        ask="hello world", prompt="hello world", answer="Hi again"),
]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = store_for(store_url)
    loop = asyncio.new_event_loop()

    async def fill() -> None:
        await opened.open()
        await opened.write(DATA)

    loop.run_until_complete(fill())
    try:
        yield _Sync(opened, loop)  # type: ignore[misc]
    finally:
        loop.run_until_complete(opened.aclose())
        loop.close()


class _Sync:
    """The store plus the loop it was opened on, so tests can ``run`` coroutines against it."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["request_id"] for r in rows]


# --- analytics ----------------------------------------------------------------------


def test_volume_by_model_per_hour(store: Any) -> None:
    assert store.run(analytics.volume(store.store, bucket="hour", by="model")) == [
        {"bucket": H10, "group": "m-a", "requests": 3, "errors": 1},
        {"bucket": H10, "group": "m-b", "requests": 2, "errors": 1},
        {"bucket": H11, "group": "m-a", "requests": 1, "errors": 0},
        {"bucket": H11, "group": "m-b", "requests": 1, "errors": 0},  # a client that left is not an error
        {"bucket": H11, "group": None, "requests": 1, "errors": 1},
        {"bucket": H12, "group": "m-a", "requests": 1, "errors": 0},
        {"bucket": H12, "group": "m-b", "requests": 1, "errors": 1},
        {"bucket": DAY2_H11, "group": "m-a", "requests": 1, "errors": 0},
    ]


def test_volume_by_provider_per_day_and_by_key_per_week(store: Any) -> None:
    assert store.run(analytics.volume(store.store, bucket="day", by="provider")) == [
        {"bucket": "2025-01-01T00:00:00.000Z", "group": "p1", "requests": 5, "errors": 2},
        {"bucket": "2025-01-01T00:00:00.000Z", "group": "p2", "requests": 4, "errors": 1},
        {"bucket": "2025-01-01T00:00:00.000Z", "group": None, "requests": 1, "errors": 1},
        {"bucket": "2025-01-02T00:00:00.000Z", "group": "p1", "requests": 1, "errors": 0},
    ]
    # weeks are 604800 s buckets from the Unix epoch (a Thursday)
    assert store.run(analytics.volume(store.store, bucket="week", by="key")) == [
        {"bucket": "2024-12-26T00:00:00.000Z", "group": K1, "requests": 5, "errors": 0},
        {"bucket": "2024-12-26T00:00:00.000Z", "group": K2, "requests": 4, "errors": 3},
        {"bucket": "2024-12-26T00:00:00.000Z", "group": None, "requests": 1, "errors": 1},
        {"bucket": "2025-01-02T00:00:00.000Z", "group": K1, "requests": 1, "errors": 0},
    ]


def test_volume_in_a_time_window(store: Any) -> None:
    window = query.Filter(since=T0 + 3600, until=T0 + 7200)
    assert store.run(analytics.volume(store.store, window, bucket=3600, by="model")) == [
        {"bucket": H11, "group": "m-a", "requests": 1, "errors": 0},
        {"bucket": H11, "group": "m-b", "requests": 1, "errors": 0},
        {"bucket": H11, "group": None, "requests": 1, "errors": 1},
    ]


def test_latency_percentiles_by_model(store: Any) -> None:
    assert store.run(analytics.latency(store.store, by="model")) == [
        # m-a: [100, 120, 150, 200, 300, 600]; ttft of its streams: [50, 70, 90]
        {"bucket": None, "group": "m-a", "requests": 6, "mean_ms": 245.0, "p50_ms": 175.0, "p95_ms": 525.0,
         "p99_ms": 585.0, "ttft_p50_ms": 70.0, "ttft_p95_ms": 88.0, "ttft_p99_ms": 89.6},
        # m-b: [50, 250, 400, 500]; ttft of its streams: [30]
        {"bucket": None, "group": "m-b", "requests": 4, "mean_ms": 300.0, "p50_ms": 325.0, "p95_ms": 485.0,
         "p99_ms": 497.0, "ttft_p50_ms": 30.0, "ttft_p95_ms": 30.0, "ttft_p99_ms": 30.0},
        {"bucket": None, "group": None, "requests": 1, "mean_ms": 1.0, "p50_ms": 1.0, "p95_ms": 1.0,
         "p99_ms": 1.0, "ttft_p50_ms": None, "ttft_p95_ms": None, "ttft_p99_ms": None},
    ]


def test_latency_and_ttft_trend_per_hour(store: Any) -> None:
    assert store.run(analytics.latency(store.store, bucket="hour", by=None)) == [
        # [100, 200, 300, 400, 500]; streams' ttft [50, 70]
        {"bucket": H10, "group": None, "requests": 5, "mean_ms": 300.0, "p50_ms": 300.0, "p95_ms": 480.0,
         "p99_ms": 496.0, "ttft_p50_ms": 60.0, "ttft_p95_ms": 69.0, "ttft_p99_ms": 69.8},
        # [1, 150, 250]; ttft [30]
        {"bucket": H11, "group": None, "requests": 3, "mean_ms": 133.667, "p50_ms": 150.0, "p95_ms": 240.0,
         "p99_ms": 248.0, "ttft_p50_ms": 30.0, "ttft_p95_ms": 30.0, "ttft_p99_ms": 30.0},
        # [50, 600]; ttft [90]
        {"bucket": H12, "group": None, "requests": 2, "mean_ms": 325.0, "p50_ms": 325.0, "p95_ms": 572.5,
         "p99_ms": 594.5, "ttft_p50_ms": 90.0, "ttft_p95_ms": 90.0, "ttft_p99_ms": 90.0},
        {"bucket": DAY2_H11, "group": None, "requests": 1, "mean_ms": 120.0, "p50_ms": 120.0, "p95_ms": 120.0,
         "p99_ms": 120.0, "ttft_p50_ms": None, "ttft_p95_ms": None, "ttft_p99_ms": None},
    ]


def test_tokens_and_cost_by_model_provider_and_key(store: Any) -> None:
    none = {"group": None, "requests": 1, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
            "cost": None}
    assert store.run(analytics.tokens(store.store, by="model")) == [
        {"group": "m-a", "requests": 6, "prompt_tokens": 51, "completion_tokens": 121, "total_tokens": 172,
         "cost": 0.066},
        {"group": "m-b", "requests": 4, "prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60,
         "cost": 0.04},
        none,
    ]
    assert store.run(analytics.tokens(store.store, by="provider")) == [
        {"group": "p1", "requests": 6, "prompt_tokens": 39, "completion_tokens": 71, "total_tokens": 110,
         "cost": 0.036},
        {"group": "p2", "requests": 4, "prompt_tokens": 32, "completion_tokens": 90, "total_tokens": 122,
         "cost": 0.07},
        none,
    ]
    assert store.run(analytics.tokens(store.store, by="key")) == [
        {"group": K1, "requests": 6, "prompt_tokens": 66, "completion_tokens": 158, "total_tokens": 224,
         "cost": 0.106},
        {"group": K2, "requests": 4, "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "cost": None},
        none,
    ]


def test_error_rate_by_provider_and_error_types(store: Any) -> None:
    assert store.run(analytics.errors(store.store, by="provider")) == {
        "groups": [
            {"group": "p1", "requests": 6, "errors": 2, "error_rate": 0.333333},
            {"group": "p2", "requests": 4, "errors": 1, "error_rate": 0.25},
            {"group": None, "requests": 1, "errors": 1, "error_rate": 1.0},
        ],
        "types": [
            {"error_type": "all_attempts_failed", "outcome": "error", "count": 1, "rate": 0.090909},
            {"error_type": "invalid_api_key", "outcome": "error", "count": 1, "rate": 0.090909},
            {"error_type": "rate_limit_exceeded", "outcome": "error", "count": 1, "rate": 0.090909},
            {"error_type": "upstream_connection_error", "outcome": "stream_error", "count": 1, "rate": 0.090909},
        ],
    }


def test_most_common_prompts(store: Any) -> None:
    assert store.run(analytics.prompts(store.store)) == [
        {"prompt": "hello world", "count": 5, "models": 2},
        {"prompt": "summarize this", "count": 2, "models": 1},
        {"prompt": "tell me a joke", "count": 2, "models": 2},
    ]
    assert store.run(analytics.prompts(store.store, query.Filter(model="m-b"), limit=1)) == [
        {"prompt": "hello world", "count": 2, "models": 1}]


def test_cache_hit_rate(store: Any) -> None:
    assert store.run(analytics.cache(store.store)) == [
        {"group": None, "requests": 11, "cache_hits": 3, "hit_rate": 0.272727, "saved_tokens": 92}]
    assert store.run(analytics.cache(store.store, by="model")) == [
        {"group": "m-a", "requests": 6, "cache_hits": 2, "hit_rate": 0.333333, "saved_tokens": 32},
        {"group": "m-b", "requests": 4, "cache_hits": 1, "hit_rate": 0.25, "saved_tokens": 60},
        {"group": None, "requests": 1, "cache_hits": 0, "hit_rate": 0.0, "saved_tokens": 0},
    ]


def test_summary(store: Any) -> None:
    assert store.run(analytics.summary(store.store)) == {
        "requests": 11, "first": H10, "last": DAY2_H11,
        "outcomes": {"client_disconnected": 1, "error": 3, "ok": 6, "stream_error": 1},
        "error_rate": 0.363636,
        # [1, 50, 100, 120, 150, 200, 250, 300, 400, 500, 600]; streams' ttft [30, 50, 70, 90]
        "latency": {"mean_ms": 242.818, "p50_ms": 200.0, "p95_ms": 550.0, "p99_ms": 590.0,
                    "ttft_p50_ms": 60.0, "ttft_p95_ms": 87.0, "ttft_p99_ms": 89.4},
        "tokens": {"prompt_tokens": 71, "completion_tokens": 161, "total_tokens": 232, "cost": 0.106},
        "cache_hit_rate": 0.272727,
        "models": [{"model": "m-a", "requests": 6, "total_tokens": 172},
                   {"model": "m-b", "requests": 4, "total_tokens": 60},
                   {"model": None, "requests": 1, "total_tokens": 0}],
    }


def test_empty_window(store: Any) -> None:
    nothing = query.Filter(since=T0 + 10**7)
    assert store.run(analytics.volume(store.store, nothing)) == []
    assert store.run(analytics.summary(store.store, nothing)) == {
        "requests": 0, "first": None, "last": None, "outcomes": {}, "error_rate": None,
        "latency": dict.fromkeys(("mean_ms", "p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms", "ttft_p95_ms",
                                  "ttft_p99_ms")),
        "tokens": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": None},
        "cache_hit_rate": None, "models": []}


# --- search / show / export -----------------------------------------------------------------


@pytest.mark.parametrize(("where", "expected"), [
    (query.Filter(), ["req-11", "req-10", "req-9", "req-8", "req-7", "req-6", "req-5", "req-4", "req-3",
                      "req-2", "req-1"]),
    (query.Filter(model="m-b"), ["req-10", "req-7", "req-5", "req-4"]),
    (query.Filter(status="5xx"), ["req-5"]),
    (query.Filter(status="4xx"), ["req-10", "req-8", "req-7"]),
    (query.Filter(status="error"), ["req-10", "req-8", "req-5"]),
    (query.Filter(status="200", provider="p2"), ["req-9", "req-4"]),
    (query.Filter(text="HELLO"), ["req-11", "req-7", "req-4", "req-2", "req-1"]),  # case-insensitive
    (query.Filter(text="cat SAT"), ["req-6"]),  # in the request and in the response: once
    (query.Filter(text="100%"), ["req-9"]),  # % and _ are literal, not wildcards
    (query.Filter(text="%"), ["req-9"]),
    (query.Filter(text="_"), []),
    (query.Filter(since=T0 + 3600, until=T0 + 7200), ["req-8", "req-7", "req-6"]),
    (query.Filter(key=K2, provider="p2"), ["req-7", "req-5"]),
    (query.Filter(trace_id=TRACE), ["req-9"]),
    (query.Filter(trace_id=f" {TRACE.upper()} "), ["req-9"]),  # as a tool may print it
    (query.Filter(trace_id="0" * 32), []),
])
def test_search(store: Any, where: query.Filter, expected: list[str]) -> None:
    assert ids(store.run(query.search(store.store, where, limit=50))) == expected
    assert store.run(query.count(store.store, where)) == len(expected)


def test_search_pages_and_summary_columns(store: Any) -> None:
    page = store.run(query.search(store.store, query.Filter(), limit=2, offset=1))
    assert page == [
        {"id": 10, "request_id": "req-10", "timestamp": "2025-01-01T12:01:40.000Z", "endpoint": "chat",
         "key_id": K2, "model": "m-b", "provider": "p1", "deployment": "p1/m-b", "stream": False, "status": 429,
         "outcome": "error", "error_type": "rate_limit_exceeded", "response_time_ms": 50.0, "ttft_ms": None,
         "prompt_tokens": None, "completion_tokens": None, "tokens_used": None, "cost": None, "cache_hit": False,
         "prompt": None, "client_request_id": None, "trace_id": None},
        {"id": 9, "request_id": "req-9", "timestamp": "2025-01-01T12:00:00.000Z", "endpoint": "chat",
         "key_id": K1, "model": "m-a", "provider": "p2", "deployment": "p2/m-a", "stream": True, "status": 200,
         "outcome": "ok", "error_type": None, "response_time_ms": 600.0, "ttft_ms": 90.0, "prompt_tokens": 12,
         "completion_tokens": 50, "tokens_used": 62, "cost": 0.03, "cache_hit": False, "prompt": "summarize this",
         "client_request_id": None, "trace_id": TRACE},
    ]


def test_show_by_request_id_or_row_id(store: Any) -> None:
    expected = {**DEFAULTS, "id": 3, "request_id": "req-3", "timestamp": "2025-01-01T10:02:00.000Z",
                "key_id": K2, "model": "m-a", "provider": "p1", "deployment": "p1/m-a", "stream": True,
                "messages": [{"role": "user", "content": "Tell me a joke"}], "response": "Why did",
                "prompt": "tell me a joke", "outcome": "stream_error", "error_type": "upstream_connection_error",
                "error": "upstream_connection_error happened", "response_time_ms": 300.0, "ttft_ms": 70.0,
                "prompt_tokens": 5, "completion_tokens": 3, "tokens_used": 8}
    assert store.run(query.get(store.store, "req-3")) == expected
    assert store.run(query.get(store.store, "3")) == expected
    assert store.run(query.get(store.store, "req-99")) is None


def test_export_every_format_matches_the_records(store: Any) -> None:
    where = query.Filter(model="m-a")
    records = [store.run(query.get(store.store, f"req-{n}")) for n in (1, 2, 3, 6, 9, 11)]

    async def collect(fmt: str) -> bytes:
        return b"".join([chunk async for chunk in export(store.store, where, fmt)])

    jsonl = store.run(collect("jsonl"))
    assert [orjson.loads(line) for line in jsonl.splitlines()] == records
    assert orjson.loads(store.run(collect("json"))) == records
    table = list(csv.DictReader(io.StringIO(store.run(collect("csv")).decode())))
    assert [r["request_id"] for r in table] == [r["request_id"] for r in records]
    assert table[0] == {**{k: "" for k in query.ALL}, "id": "1", "request_id": "req-1",
                        "timestamp": "2025-01-01T10:00:00.000Z", "endpoint": "chat", "key_id": K1,
                        "model": "m-a", "provider": "p1", "deployment": "p1/m-a", "stream": "False",
                        "capture": "full", "messages": '[{"role":"user","content":"Hello World"}]',
                        "response": "Hi there", "prompt": "hello world", "status": "200", "outcome": "ok",
                        "response_time_ms": "100.0", "ttft_ms": "100.0", "prompt_tokens": "10",
                        "completion_tokens": "20", "tokens_used": "30", "cost": "0.01", "cache_hit": "False",
                        "attempts": "1"}
    empty = query.Filter(model="nobody")
    assert store.run(_collect(store.store, empty, "json")) == b"[]\n"


async def _collect(store: Store, where: query.Filter, fmt: str) -> bytes:
    return b"".join([chunk async for chunk in export(store, where, fmt)])


def test_walk_pages_through_everything(store: Any) -> None:
    async def walk_all(page: int) -> list[str]:
        return [r["request_id"] async for r in query.walk(store.store, query.Filter(provider="p1"), page=page)]

    expected = ["req-1", "req-2", "req-3", "req-6", "req-10", "req-11"]
    assert store.run(walk_all(2)) == expected
    assert store.run(walk_all(1000)) == expected


def test_retention_purge(store: Any) -> None:
    """Rows older than retention_days go; the rest stay (the cutoff is relative to now)."""
    writer = HistoryWriter(store.store, retention_days=1)
    now = store.run(_now_rows(store.store))
    assert store.run(writer.purge()) == 11  # the data set is from 2025
    assert ids(store.run(query.search(store.store, query.Filter()))) == now
    assert writer.purged == 11


async def _now_rows(store: Store) -> list[str]:
    import time

    fresh = [row(100 + i, time.time() - T0 - i * 3600, "m-a", "p1", K1, latency=1, ttft=1) for i in range(3)]
    await store.write(fresh)
    return ["req-100", "req-101", "req-102"]
