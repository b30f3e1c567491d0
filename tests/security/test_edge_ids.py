"""Request ids: labgate's own are unguessable and name one record each; a client's id never names a record.

The bug: a client's ``x-request-id`` became the record's id, and generated ids
were sequential; a second request reusing a victim's id made
``/admin/history/<id>`` return the forged record.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from labgate.server.ids import MAX_CLIENT_REQUEST_ID, client_request_id, request_id
from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

KEY = "sk-edge-ids-test-0123456789"
ID = re.compile(r"req_[0-9a-f]{32}")


def test_labgate_ids_are_128_random_bits_and_ignore_the_client() -> None:
    ids = [request_id({"x-request-id": "mine"}) for _ in range(20_000)]
    assert all(ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    # not sequential: no two consecutive ids share more than a few leading hex digits
    shared = [next(n for n, (x, y) in enumerate(zip(a, b, strict=True)) if x != y) for a, b in itertools.pairwise(ids)]
    assert max(shared) < 4 + 8
    # every hex digit is about equally likely in every position (a counter's high digits never change)
    for position in (4, 20, 35):
        counts = Counter(i[position] for i in ids)
        assert len(counts) == 16 and min(counts.values()) > 20_000 / 16 * 0.8, (position, counts)


@pytest.mark.parametrize(("given", "kept"), [
    ("trace-42", "trace-42"), ("a" * MAX_CLIENT_REQUEST_ID, "a" * MAX_CLIENT_REQUEST_ID),
    ("a" * (MAX_CLIENT_REQUEST_ID + 1), None), ("", None), ("tab\there", None), ("nul\x00", None),
    ("esc\x1b[31m", None), ("del\x7f", None), ("caf\u00e9", None), ("\u202eevil", None), (" spaced id ", " spaced id "),
])
def test_the_clients_id_is_kept_only_when_sane(given: str, kept: str | None) -> None:
    assert client_request_id({"x-request-id": given}) == kept


@given(st.text(max_size=300))
def test_a_kept_client_id_is_always_printable_ascii_and_bounded(text: str) -> None:
    kept = client_request_id({"x-request-id": text})
    assert kept is None or (kept == text and kept.isascii() and kept.isprintable()
                            and 0 < len(kept) <= MAX_CLIENT_REQUEST_ID)


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RunningGateway,
                                                                                         aiohttp.ClientSession]]:
    monkeypatch.setenv("LABGATE_EDGE_IDS_KEY", KEY)
    async with Simulator(models=["m1", "m2"]) as sim, aiohttp.ClientSession() as http:
        provider = {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1", "m2"]}
        config = config_from({"sim": provider},
                             gateway={"auth": {"master_key_env": "LABGATE_EDGE_IDS_KEY"},
                                      "store": {"url": str(tmp_path / "h.db"), "capture": "full"},
                                      "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            yield running, http
        finally:
            await running.stop(grace=1.0)


async def call(served: tuple[RunningGateway, aiohttp.ClientSession], method: str, path: str, *,
               body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    running, http = served
    sent = {"authorization": f"Bearer {KEY}", **(headers or {})}
    async with http.request(method, running.url + path, json=body, headers=sent) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, orjson.loads(await r.read())


def chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


@pytest.mark.asyncio
async def test_a_reused_client_id_cannot_alias_or_overwrite_another_record(served: Any) -> None:
    running, _ = served
    victim_status, victim, _ = await call(served, "POST", "/v1/chat/completions", body=chat("m1", "victim's secret"),
                                          headers={"x-request-id": "shared-7"})
    forger_status, forger, _ = await call(served, "POST", "/v1/chat/completions", body=chat("m2", "forged"),
                                          headers={"x-request-id": "shared-7"})
    assert (victim_status, forger_status) == (200, 200)
    victim_id, forger_id = victim["x-request-id"], forger["x-request-id"]
    assert ID.fullmatch(victim_id) and ID.fullmatch(forger_id) and victim_id != forger_id
    assert victim["x-client-request-id"] == forger["x-client-request-id"] == "shared-7"
    await running.gateway.history.flush()

    status, _, record = await call(served, "GET", f"/admin/history/{victim_id}")
    assert (status, record["request_id"], record["client_request_id"], record["model"], record["messages"]) == (
        200, victim_id, "shared-7", "m1", [{"role": "user", "content": "victim's secret"}])
    status, _, record = await call(served, "GET", f"/admin/history/{forger_id}")
    assert (status, record["model"]) == (200, "m2")
    status, _, error = await call(served, "GET", "/admin/history/shared-7")  # the client's id names nothing
    assert (status, error["error"]["code"]) == (404, "record_not_found")
    status, _, found = await call(served, "GET", "/admin/history?client_request_id=shared-7")
    assert sorted((r["request_id"], r["model"]) for r in found["data"]) == sorted(
        [(victim_id, "m1"), (forger_id, "m2")])


@pytest.mark.asyncio
async def test_an_insane_client_id_is_dropped_not_echoed(served: Any) -> None:
    running, _ = served
    status, headers, _ = await call(served, "POST", "/v1/chat/completions", body=chat("m1", "x"),
                                    headers={"x-request-id": "x" * 500})
    assert status == 200 and "x-client-request-id" not in headers and ID.fullmatch(headers["x-request-id"])
    await running.gateway.history.flush()
    _, _, record = await call(served, "GET", f"/admin/history/{headers['x-request-id']}")
    assert record["client_request_id"] is None


@pytest.mark.asyncio
async def test_error_envelopes_carry_labgates_id_and_echo_the_clients(served: Any) -> None:
    status, headers, body = await call(served, "POST", "/v1/chat/completions", body=chat("no-such", "x"),
                                       headers={"x-request-id": "mine-1"})
    assert (status, body["request_id"], headers["x-client-request-id"]) == (404, headers["x-request-id"], "mine-1")
    status, headers, body = await call(served, "POST", "/v1/messages", headers={"x-request-id": "mine-2"},
                                       body={"model": "no-such", "max_tokens": 4,
                                             "messages": [{"role": "user", "content": "x"}]})
    assert (status, body["request_id"], headers["request-id"], headers["x-client-request-id"]) == (
        404, headers["x-request-id"], headers["x-request-id"], "mine-2")
    assert ID.fullmatch(body["request_id"])
