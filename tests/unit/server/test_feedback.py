"""``POST /v1/feedback`` through the official openai SDK's raw client, and with bad input."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgate.errors import RequestError
from labgate.server.feedback import MAX_COMMENT_CHARS, MAX_FEEDBACK_BYTES, MAX_WHO_CHARS, parse
from labgate.server.serve import RunningGateway, start_gateway
from labgate.testing import Simulator
from labgate.testing.gateway import config_from

KEY = "sk-feedback-test-0123456789"


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RunningGateway,
                                                                                         openai.AsyncOpenAI]]:
    monkeypatch.setenv("LABGATE_FEEDBACK_TEST_KEY", KEY)
    async with Simulator(models=["m1", "m2"]) as sim:
        provider = {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1", "m2"]}
        config = config_from({"sim": provider},
                             gateway={"auth": {"master_key_env": "LABGATE_FEEDBACK_TEST_KEY"},
                                      "store": {"url": str(tmp_path / "h.db"), "capture": "full"},
                                      "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        client = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=KEY, max_retries=0)
        try:
            yield running, client
        finally:
            await client.close()
            await running.stop(grace=1.0)


async def _answered(client: openai.AsyncOpenAI, model: str = "m1") -> str:
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}])
    return raw.headers["x-request-id"]


@dataclass(frozen=True)
class Answer:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return orjson.loads(self.text)


async def _vote(client: openai.AsyncOpenAI, body: dict[str, Any]) -> Answer:
    """POST /v1/feedback on the wire (the SDK has no feedback method; its HTTP library is its own business)."""
    headers = {"authorization": f"Bearer {client.api_key}", "content-type": "application/json"}
    async with aiohttp.ClientSession() as http, http.post(
            str(client.base_url).rstrip("/") + "/feedback", data=orjson.dumps(body), headers=headers) as r:
        return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.text())


async def _http(method: str, url: str, *, headers: dict[str, str] | None = None,
                data: bytes | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers, data=data) as r:
        return r.status, orjson.loads(await r.read())


@pytest.mark.asyncio
async def test_a_vote_right_after_the_answer_is_stored_and_shown_in_the_record(served: Any) -> None:
    running, client = served
    rid = await _answered(client)
    # sent at once: the record may still be queued for the writer; the gateway flushes before refusing
    first = await _vote(client, {"request_id": rid, "thumbs": "up", "comment": "good", "who": "ana"})
    assert first.status_code == 201, first.text
    shown = first.json()
    assert (shown["object"], shown["request_id"], shown["thumbs"], shown["who"]) == ("feedback", rid, "up", "ana")
    assert shown["id"].startswith("fb_") and first.headers["x-request-id"].startswith("req_")
    second = await _vote(client, {"request_id": rid, "score": 4, "preferred": True, "comparison_id": "cmp-1"})
    assert second.status_code == 201
    _, record = await _http("GET", f"{running.url}/admin/history/{rid}", headers={"authorization": f"Bearer {KEY}"})
    votes = record["feedback"]
    assert [(v["thumbs"], v["score"], v["preferred"], v["comment"], v["comparison_id"]) for v in votes] == [
        (1, None, None, "good", None), (None, 4, True, None, "cmp-1")]
    assert all(v["key_id"] == record["key_id"] and v["timestamp"].endswith("Z") for v in votes)


@pytest.mark.asyncio
async def test_feedback_by_model(served: Any) -> None:
    running, client = served
    for model, body in (("m1", {"score": 5}), ("m1", {"score": 3, "thumbs": "down"}), ("m2", {"thumbs": "up"})):
        rid = await _answered(client, model)
        assert (await _vote(client, {"request_id": rid, **body})).status_code == 201
    auth = {"authorization": f"Bearer {KEY}"}
    _, answer = await _http("GET", f"{running.url}/admin/analytics/feedback", headers=auth)
    refused, _ = await _http("GET", f"{running.url}/admin/analytics/feedback")
    assert refused == 401
    rows = {r["model"]: r for r in answer}
    assert (rows["m1"]["votes"], rows["m1"]["mean_score"], rows["m1"]["thumbs_down"]) == (2, 4.0, 1)
    assert (rows["m2"]["votes"], rows["m2"]["thumbs_up"], rows["m2"]["mean_score"]) == (1, 1, None)


@pytest.mark.asyncio
async def test_unknown_request_id_is_404_and_nothing_is_stored(served: Any, tmp_path: Path) -> None:
    _, client = served
    answer = await _vote(client, {"request_id": "req_" + "0" * 32, "thumbs": "up"})
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("record_not_found", "request_id")
    with sqlite3.connect(tmp_path / "h.db") as conn:
        assert conn.execute("SELECT count(*) FROM feedback").fetchone() == (0,)


@pytest.mark.asyncio
async def test_an_unknown_id_flushes_the_writer_only_when_records_wait(served: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    running, client = served
    history = running.gateway.history
    flushes: list[int] = []
    real_flush = history.flush

    async def counted() -> None:
        flushes.append(history.stats()["queued"])
        await real_flush()

    monkeypatch.setattr(history, "flush", counted)
    await _answered(client)
    await real_flush()  # written: nothing waits
    assert (await _vote(client, {"request_id": "req_unknown", "score": 1})).status_code == 404
    assert flushes == []
    rid = await _answered(client)  # queued, not yet written
    assert (await _vote(client, {"request_id": rid, "score": 1})).status_code == 201
    assert len(flushes) <= 1 and all(q > 0 for q in flushes)


@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "param"), [
    ({"thumbs": "up"}, "request_id"),
    ({"request_id": "", "thumbs": "up"}, "request_id"),
    ({"request_id": 7, "thumbs": "up"}, "request_id"),
    ({"request_id": "r"}, "score"),  # no vote at all
    ({"request_id": "r", "score": 0}, "score"),
    ({"request_id": "r", "score": 6}, "score"),
    ({"request_id": "r", "score": 3.5}, "score"),
    ({"request_id": "r", "score": True}, "score"),
    ({"request_id": "r", "score": "5"}, "score"),
    ({"request_id": "r", "thumbs": "sideways"}, "thumbs"),
    ({"request_id": "r", "thumbs": 1}, "thumbs"),
    ({"request_id": "r", "preferred": "yes"}, "preferred"),
    ({"request_id": "r", "score": 3, "comment": "x" * (MAX_COMMENT_CHARS + 1)}, "comment"),
    ({"request_id": "r", "score": 3, "who": "x" * (MAX_WHO_CHARS + 1)}, "who"),
    ({"request_id": "r", "score": 3, "who": "a\x00b"}, "who"),
    ({"request_id": "r", "score": 3, "stars": 5}, "stars"),
])
async def test_bad_input_is_400_naming_the_field(served: Any, body: dict[str, Any], param: str) -> None:
    _, client = served
    answer = await _vote(client, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert answer.json()["request_id"] == answer.headers["x-request-id"]


@pytest.mark.asyncio
async def test_not_json_too_large_and_no_key(served: Any) -> None:
    running, _ = served
    auth = {"authorization": f"Bearer {KEY}"}
    url = running.url + "/v1/feedback"
    not_json = await _http("POST", url, data=b"{nope", headers=auth)
    array = await _http("POST", url, data=b"[]", headers=auth)
    large = await _http("POST", url, headers=auth,
                        data=orjson.dumps({"request_id": "r", "comment": "x" * MAX_FEEDBACK_BYTES}))
    keyless = await _http("POST", url, data=orjson.dumps({"request_id": "r", "score": 1}))
    get = await _http("GET", url, headers=auth)
    assert [a[0] for a in (not_json, array, large, keyless, get)] == [400, 400, 413, 401, 405]
    assert not_json[1]["error"]["code"] == "invalid_json"


@pytest.mark.asyncio
async def test_history_off_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Simulator(models=["m1"]) as sim:
        config = config_from({"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m1"]}},
                             gateway={"store": {"capture": "none"}, "logging": {"requests": False}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        try:
            status, _ = await _http("POST", running.url + "/v1/feedback", data=b'{"request_id": "r", "score": 1}')
        finally:
            await running.stop(grace=1.0)
    assert status == 503


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=4), max_leaves=12))
def test_any_json_is_accepted_or_a_request_error(value: Any) -> None:
    """Whatever JSON a client sends, parse() returns a valid vote or raises RequestError: never anything else."""
    try:
        fields = parse(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except RequestError:
        return
    except orjson.JSONEncodeError:  # hypothesis made something JSON cannot hold (nan is allowed by orjson)
        return
    assert isinstance(fields["request_id"], str) and fields["request_id"]
    assert fields["score"] is None or 1 <= fields["score"] <= 5
    assert fields["thumbs"] in (None, 1, -1)
    assert fields["score"] is not None or fields["thumbs"] is not None or fields["preferred"] is True
