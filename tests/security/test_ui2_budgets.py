"""``GET /admin/budgets`` and the audit log's search for the Lab UI's Access page: admission (master key only,
a virtual key is told why it is refused), hostile query strings get a 400 envelope, spend moves after a request."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import orjson
import pytest
import pytest_asyncio

from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

MASTER = "sk-ui2-budgets-0123456789"
ENV = "LABGATE_UI2_BUDGETS_MASTER"
Served = tuple[RunningGateway, aiohttp.ClientSession, str]


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv(ENV, MASTER)
    async with Simulator(models=["m"]) as sim, aiohttp.ClientSession() as http:
        config = config_from(
            {"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"],
                     "pricing": {"input_per_1m": 1000.0, "output_per_1m": 2000.0}}},
            gateway={"auth": {"master_key_env": ENV}, "store": {"url": str(tmp_path / "h.db")},
                     "logging": {"requests": False},
                     "budgets": {"limits": [{"scope": "global", "limit_usd": 500, "period": "month"},
                                            {"scope": "model", "name": "m", "limit_usd": 50, "period": "day"}]}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        async with http.post(running.url + "/admin/keys", json={"name": "spender", "budget_usd": 5},
                             headers=_master()) as r:
            assert r.status == 201
            secret = (await r.json())["key"]
        try:
            yield running, http, secret
        finally:
            await running.stop(grace=1.0)


def _master() -> dict[str, str]:
    return {"authorization": f"Bearer {MASTER}"}


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, Any, str]:
    async with http.get(url, headers=headers) as r:
        return r.status, orjson.loads(await r.read()), r.headers.get("x-request-id", "")


@pytest.mark.asyncio
async def test_budgets_list_limits_windows_and_spend_moves_after_a_request(served: Served) -> None:
    running, http, secret = served
    status, before, _ = await _get(http, running.url + "/admin/budgets", _master())
    assert status == 200 and before["error"] is None and before["backend"] == "memory"
    by_budget = {row["budget"]: row for row in before["data"]}
    assert set(by_budget) == {"global", "model:m", next(b for b in by_budget if b.startswith("key:"))}
    key_row = next(row for row in before["data"] if row["scope"] == "key")
    assert {k: key_row[k] for k in ("key_name", "limit_usd", "period", "used_usd", "remaining_usd")} == {
        "key_name": "spender", "limit_usd": 5.0, "period": "month", "used_usd": 0.0, "remaining_usd": 5.0}
    assert by_budget["model:m"]["window"] == "d" + time.strftime("%Y%m%d", time.gmtime())
    assert 0 < by_budget["model:m"]["resets_in_s"] <= 86400
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "spend"}]}
    async with http.post(running.url + "/v1/chat/completions", json=body,
                         headers={"authorization": f"Bearer {secret}"}) as r:
        assert r.status == 200
        await r.read()
    await running.gateway.runtime.limiter.drain()  # type: ignore[union-attr]
    status, after, _ = await _get(http, running.url + "/admin/budgets", _master())
    spent = {row["budget"]: row["used_usd"] for row in after["data"]}
    assert all(spent[name] > 0 for name in spent), spent
    assert len(set(spent.values())) == 1  # the same request's cost, charged to each budget it drew on
    status, keys_only, _ = await _get(http, running.url + "/admin/budgets?scope=key", _master())
    assert [row["scope"] for row in keys_only["data"]] == ["key"]


@pytest.mark.asyncio
@pytest.mark.parametrize("query", ["scope=nope", "scope=", "scope=key&scope=model", "limit=5", "a=1&b=2&c=3",
                                   "scope=%00", "%ff=1", "&&&", "scope=" + "k" * 5000])
async def test_hostile_budget_params_get_a_400_envelope(served: Served, query: str) -> None:
    running, http, _ = served
    status, data, rid = await _get(http, f"{running.url}/admin/budgets?{query}", _master())
    assert status == 400 and data["error"]["type"] == "invalid_request_error" and data["error"]["message"]
    assert rid and data["request_id"] == rid


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/admin/budgets", "/admin/audit", "/admin/keys"])
async def test_admin_reads_refuse_a_virtual_key_and_say_why(served: Served, path: str) -> None:
    running, http, secret = served
    status, data, _ = await _get(http, running.url + path, {"authorization": f"Bearer {secret}"})
    assert status == 401 and data["error"]["code"] == "virtual_key_not_admin"
    assert "master key" in data["error"]["message"]
    status, data, _ = await _get(http, running.url + path, {"authorization": "Bearer sk-wrong"})
    assert status == 401 and data["error"]["code"] == "invalid_api_key"
    status, data, _ = await _get(http, running.url + path, {})
    assert status == 401


@pytest.mark.asyncio
async def test_audit_search_and_pages(served: Served) -> None:
    running, http, _ = served
    for name in ("alpha_1", "alpha%2", "beta"):
        async with http.post(running.url + "/admin/keys", json={"name": name}, headers=_master()) as r:
            assert r.status == 201
    url = running.url + "/admin/audit"
    status, found, _ = await _get(http, url + "?action=key.create&q=alpha", _master())
    assert status == 200 and sorted(e["after"]["name"] for e in found["data"]) == ["alpha%2", "alpha_1"]
    # LIKE's wildcards are literal in q
    status, found, _ = await _get(http, url + "?q=alpha%25", _master())
    assert [e["after"]["name"] for e in found["data"]] == ["alpha%2"]
    status, found, _ = await _get(http, url + "?q=a_p", _master())
    assert found["data"] == []
    status, page1, _ = await _get(http, url + "?action=key.&limit=2", _master())
    status, page2, _ = await _get(http, f"{url}?action=key.&limit=2&until={page1['data'][-1]['ts']}", _master())
    names = [e["after"]["name"] for e in page1["data"] + page2["data"]]
    assert names == ["beta", "alpha%2", "alpha_1", "spender"]


@pytest.mark.asyncio
@pytest.mark.parametrize("query", ["q=" + "x" * 201, "q=a%00b", "q=%0a", "until=-1", "until=abc", "until=1e300",
                                   "since=nan"])
async def test_hostile_audit_params_get_a_400_envelope(served: Served, query: str) -> None:
    running, http, _ = served
    status, data, rid = await _get(http, f"{running.url}/admin/audit?{query}", _master())
    assert status == 400 and data["error"]["type"] == "invalid_request_error" and data["request_id"] == rid


@pytest.mark.asyncio
@pytest.mark.parametrize("text", ["'", "\\", "%", "_", "%F0%9F%98%80", "'%20OR%201=1%20--", "\\%25", "%ff%fe",
                                  "x" * 200])
async def test_any_audit_search_is_an_answer_never_a_500(served: Served, text: str) -> None:
    running, http, _ = served
    status, data, _ = await _get(http, f"{running.url}/admin/audit?q={text}", _master())
    assert status == 200
    wanted = unquote(text, errors="replace")
    for entry in data["data"]:  # a literal substring, never a LIKE wildcard
        fields = [entry["actor"], entry["target"] or "", orjson.dumps(entry["before"]).decode(),
                  orjson.dumps(entry["after"]).decode()]
        assert any(wanted in f for f in fields), (wanted, entry)
    assert bool(data["data"]) == (wanted == "_")  # only "_" is in this log (key ids): as a character
