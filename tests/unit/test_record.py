"""The record's fast opener builds exactly what the dataclass constructor builds."""

from __future__ import annotations

import time
from dataclasses import fields

from labgate.record import RequestRecord, open_record


def test_open_record_equals_the_dataclass_constructor_field_by_field() -> None:
    before_perf, before_wall = time.perf_counter(), time.time()
    fast = open_record("req_1", "chat", "10.0.0.1", "client-7")
    slow = RequestRecord("req_1", "chat", "10.0.0.1", "client-7")
    for f in fields(RequestRecord):
        if f.name in ("started", "timestamp"):
            continue
        assert getattr(fast, f.name) == getattr(slow, f.name), f.name
    assert before_perf <= fast.started <= time.perf_counter()
    assert before_wall <= fast.timestamp <= time.time()


def test_open_record_gives_every_record_its_own_mutable_defaults() -> None:
    a, b = open_record("req_a", "chat"), open_record("req_b", "chat")
    a.failures.append("x")  # type: ignore[arg-type]
    assert b.failures == []
    assert a.client_ip is None and a.client_request_id is None
