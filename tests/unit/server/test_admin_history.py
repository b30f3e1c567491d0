"""``/admin/history`` and ``/admin/analytics/*`` over HTTP, on a SQLite store filled by real requests."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio
KEY = "sk-admin-history-test-0123456789"


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RunningGateway,
                                                                                         aiohttp.ClientSession]]:
    monkeypatch.setenv("LABGATE_ADMIN_TEST_KEY", KEY)
    async with Simulator(models=["m1", "m2"]) as sim, aiohttp.ClientSession() as http:
        provider = {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1", "m2"]}
        config = config_from({"sim": provider},
                             gateway={"auth": {"master_key_env": "LABGATE_ADMIN_TEST_KEY"},
                                      "store": {"url": str(tmp_path / "h.db"), "capture": "full"},
                                      "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        auth = {"authorization": f"Bearer {KEY}"}
        for n, (model, text) in enumerate([("m1", "Hello"), ("m2", "hello"), ("m1", "Bye"), ("nope", "x")]):
            body = {"model": model, "messages": [{"role": "user", "content": text}]}
            async with http.post(running.url + "/v1/chat/completions", json=body,
                                 headers={**auth, "x-request-id": f"r{n}"}) as r:
                await r.read()
        assert running.gateway.history is not None
        await running.gateway.history.flush()
        try:
            yield running, http
        finally:
            await running.stop(grace=1.0)


async def get(served: tuple[RunningGateway, aiohttp.ClientSession], path: str, *,
              key: str | None = KEY) -> tuple[int, Any]:
    running, http = served
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with http.get(running.url + path, headers=headers) as r:
        data = await r.read()
        kind = r.headers.get("content-type", "")
        return r.status, orjson.loads(data) if kind.startswith("application/json") else data


async def test_the_master_key_is_required(served: Any) -> None:
    for path in ("/admin/history", "/admin/history/r0", "/admin/history/export", "/admin/history/status",
                 "/admin/history/metrics", "/admin/analytics/summary"):
        status, body = await get(served, path, key=None)
        assert (status, body["error"]["type"]) == (401, "authentication_error"), path
        status, body = await get(served, path, key="sk-wrong")
        assert status == 401, path


async def test_search_with_filters_and_paging(served: Any) -> None:
    status, body = await get(served, "/admin/history?model=m1")
    assert status == 200
    assert [(r["client_request_id"], r["model"], r["status"]) for r in body["data"]] == [
        ("r2", "m1", 200), ("r0", "m1", 200)]
    assert (body["limit"], body["offset"], body["has_more"]) == (50, 0, False)
    status, body = await get(served, "/admin/history?limit=1&offset=1")
    assert [r["client_request_id"] for r in body["data"]] == ["r2"] and body["has_more"] is True
    status, body = await get(served, "/admin/history?text=HELLO&status=ok")
    assert [r["client_request_id"] for r in body["data"]] == ["r1", "r0"]
    status, body = await get(served, "/admin/history?status=4xx")
    assert [(r["client_request_id"], r["error_type"]) for r in body["data"]] == [("r3", "model_not_found")]
    status, body = await get(served, "/admin/history?since=1h&until=2999-01-01")
    assert len(body["data"]) == 4


async def test_bad_parameters_are_400s(served: Any) -> None:
    for query, param in (("limit=0", "limit"), ("limit=abc", "limit"), ("offset=-1", "offset")):
        status, body = await get(served, f"/admin/history?{query}")
        assert (status, body["error"]["param"]) == (400, param), query
    status, body = await get(served, "/admin/history?since=yesterday-ish")
    assert status == 400 and "not a time" in body["error"]["message"]
    status, body = await get(served, "/admin/history?status=teapot")
    assert status == 400 and "status must be" in body["error"]["message"]
    status, body = await get(served, "/admin/analytics/volume?bucket=fortnight")
    assert status == 400 and "bucket must be one of" in body["error"]["message"]
    status, body = await get(served, "/admin/analytics/tokens?by=colour")
    assert status == 400 and "group by one of" in body["error"]["message"]


async def test_show_one_record(served: Any) -> None:
    status, found = await get(served, "/admin/history?client_request_id=r1")
    (rid,) = [r["request_id"] for r in found["data"]]
    assert rid.startswith("req_")
    status, body = await get(served, f"/admin/history/{rid}")
    assert status == 200
    assert {k: body[k] for k in ("request_id", "client_request_id", "model", "messages", "response", "prompt",
                                 "outcome")} == {
        "request_id": rid, "client_request_id": "r1", "model": "m2", "messages": [{"role": "user", "content": "hello"}],
        "response": " sim1 sim2 sim3 sim4 sim5 sim6 sim7 sim8", "prompt": "hello", "outcome": "ok"}
    status, body = await get(served, f"/admin/history/{body['id']}")
    assert (status, body["request_id"]) == (200, rid)
    status, body = await get(served, "/admin/history/r1")  # the client's id names no record
    assert (status, body["error"]["code"]) == (404, "record_not_found")
    status, body = await get(served, "/admin/history/nope")
    assert (status, body["error"]["code"]) == (404, "record_not_found")


async def test_export_formats(served: Any) -> None:
    status, data = await get(served, "/admin/history/export?format=jsonl&model=m1")
    assert status == 200 and [orjson.loads(line)["client_request_id"] for line in data.splitlines()] == ["r0", "r2"]
    status, data = await get(served, "/admin/history/export?format=json")
    assert [r["client_request_id"] for r in data] == ["r0", "r1", "r2", "r3"]
    status, data = await get(served, "/admin/history/export?format=csv")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert [(r["client_request_id"], r["status"]) for r in rows] == [("r0", "200"), ("r1", "200"), ("r2", "200"),
                                                               ("r3", "404")]
    status, body = await get(served, "/admin/history/export?format=xml")
    assert (status, body["error"]["param"]) == (400, "format")


async def test_analytics_endpoints(served: Any) -> None:
    status, body = await get(served, "/admin/analytics/volume?bucket=day&by=model")
    assert status == 200 and [(r["group"], r["requests"], r["errors"]) for r in body] == [
        ("m1", 2, 0), ("m2", 1, 0), ("nope", 1, 1)]
    status, body = await get(served, "/admin/analytics/tokens?by=provider")
    # the simulator has no price (cost unknown); a request that reached no upstream cost nothing
    assert body == [{"group": "sim", "requests": 3, "prompt_tokens": 3, "completion_tokens": 24,
                     "total_tokens": 27, "cost": None},
                    {"group": None, "requests": 1, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                     "cost": 0.0}]
    status, body = await get(served, "/admin/analytics/errors")
    assert body["types"] == [{"error_type": "model_not_found", "outcome": "error", "count": 1, "rate": 0.25}]
    status, body = await get(served, "/admin/analytics/prompts?limit=1")
    assert body == [{"prompt": "hello", "count": 2, "models": 2}]
    status, body = await get(served, "/admin/analytics/cache?by=none")
    assert body == [{"group": None, "requests": 4, "cache_hits": 0, "hit_rate": 0.0, "saved_tokens": 0}]
    status, body = await get(served, "/admin/analytics/latency?by=model")
    assert [(r["group"], r["requests"]) for r in body] == [("m1", 2), ("m2", 1), ("nope", 1)]
    status, body = await get(served, "/admin/analytics/summary")
    assert (body["requests"], body["outcomes"], body["error_rate"]) == (4, {"error": 1, "ok": 3}, 0.25)


async def test_status_shows_the_writer(served: Any, tmp_path: Path) -> None:
    status, body = await get(served, "/admin/history/status")
    pid = body.pop("pid", None)
    assert isinstance(pid, int) and pid != os.getpid()  # the writer process (store.writer: process, the default)
    assert (status, body) == (200, {"store": str(tmp_path / "h.db"), "capture": "full", "writer": "process",
                                    "ready": True, "queued": 0, "queue_size": 20000, "written": 4, "dropped": 0,
                                    "rejected": 0, "failed_writes": 0, "purged": 0, "last_error": None,
                                    "restarts": 0})


async def test_metrics_in_the_prometheus_format(served: Any) -> None:
    status, data = await get(served, "/admin/history/metrics")
    assert status == 200
    lines = data.decode().splitlines()
    assert "# TYPE labgate_history_dropped_total counter" in lines
    assert [line for line in lines if not line.startswith("#")] == [
        "labgate_history_written_total 4", "labgate_history_dropped_total 0", "labgate_history_rejected_total 0",
        "labgate_history_write_failures_total 0", "labgate_history_queued 0"]
