"""Feedback (migration 4) in both stores: stored, read with the record, summed per model the same way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from labgate.record import RequestRecord
from labgate.store import store_for
from labgate.store.capture import build_row
from labgate.store.feedback import Feedback, add, by_model, record_exists
from labgate.store.query import Filter, feedback

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    # a sync fixture: pg_url sets its schema up with asyncio.run, which cannot run inside a loop
    return str(tmp_path / "h.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[Any]:
    opened = store_for(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


def row(rid: str, model: str) -> Any:
    r = RequestRecord(rid, "chat", "127.0.0.1", started=0.0, timestamp=1_700_000_000.0)
    r.finished, r.model, r.status = 0.1, model, 200
    return build_row(r, capture="metadata", client_ip=True)


async def test_votes_round_trip_and_sum_per_model(store: Any) -> None:
    await store.write([row("req_1", "m1"), row("req_2", "m1"), row("req_3", "m2")])
    votes = [Feedback("fb_a", "req_1", 1_700_000_001.5, score=5, thumbs=1, comment="great", who="ana", key_id="key-1"),
             Feedback("fb_b", "req_2", 1_700_000_002.0, score=2, thumbs=-1, preferred=False),
             Feedback("fb_c", "req_3", 1_700_000_003.0, preferred=True, comparison_id="cmp-1"),
             Feedback("fb_d", "req_1", 1_700_000_004.0, thumbs=1)]
    for vote in votes:
        await add(store, vote)
    assert await record_exists(store, "req_1") and not await record_exists(store, "req_nope")
    shown = await feedback(store, "req_1")
    assert shown == [
        {"feedback_id": "fb_a", "request_id": "req_1", "timestamp": "2023-11-14T22:13:21.500Z", "score": 5,
         "thumbs": 1, "preferred": None, "comment": "great", "who": "ana", "comparison_id": None, "key_id": "key-1"},
        {"feedback_id": "fb_d", "request_id": "req_1", "timestamp": "2023-11-14T22:13:24.000Z", "score": None,
         "thumbs": 1, "preferred": None, "comment": None, "who": None, "comparison_id": None, "key_id": None}]
    assert (await feedback(store, "req_2"))[0]["preferred"] is False
    assert await by_model(store, Filter()) == [
        {"model": "m1", "votes": 3, "mean_score": 3.5, "scored": 2, "thumbs_up": 2, "thumbs_down": 1, "preferred": 0},
        {"model": "m2", "votes": 1, "mean_score": None, "scored": 0, "thumbs_up": 0, "thumbs_down": 0, "preferred": 1}]
    assert await by_model(store, Filter(model="m2")) == [
        {"model": "m2", "votes": 1, "mean_score": None, "scored": 0, "thumbs_up": 0, "thumbs_down": 0, "preferred": 1}]
