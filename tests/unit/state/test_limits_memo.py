"""The limiter's per-model memo of charges and its preformatted budget window keys (state/limits.py)."""

from __future__ import annotations

import calendar
import time

import pytest

from labgate.cost import Prices
from labgate.record import RequestRecord
from labgate.runtime import Runtime
from labgate.state import budgets, limits
from labgate.state.counters import MemoryCounters
from labgate.state.limits import Limiter
from labgate.testing.gateway import config_from


def _setup() -> tuple[Limiter, Runtime]:
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                "models": [{"name": "paid", "pricing": {"output_per_1m": 10}}, "gpt-x"]}},
                         gateway={"rate_limits": {"rpm": 100, "tpm": 5000, "models": {"gpt-*": {"tpm": 9}}},
                                  "budgets": {"limits": [{"scope": "model", "name": "paid", "limit_usd": 1,
                                                          "period": "month"},
                                                         {"scope": "global", "limit_usd": 5, "period": "day"}]}})
    return Limiter(config, MemoryCounters(), Prices.from_config(config)), Runtime.build(config)


def _record(model: str) -> RequestRecord:
    record = RequestRecord("r", "chat")
    record.model, record.payload, record.body = model, {"model": model, "max_tokens": 3}, b"x" * 40
    return record


def test_a_model_s_charges_are_the_same_from_the_memo() -> None:
    limiter, rt = _setup()
    for model, expected in (("paid", ["rpm:global", "tpm:global", "spend:model:paid:month:", "spend:global:day:"]),
                            ("gpt-x", ["rpm:global", "tpm:global", "tpm:model:gpt-*", "spend:global:day:"])):
        first = limiter.charges(_record(model), rt.table.resolve(model))
        again = limiter.charges(_record(model), rt.table.resolve(model))
        assert [c._replace(period_s=0) for c in first.charges] == [c._replace(period_s=0) for c in again.charges]
        assert [c.key[len(limiter.prefix):] for c in first.charges] == \
            [e + (budgets.window(e.split(":")[-2])[0] if e.startswith("spend") else "") for e in expected]
        assert first.tokens == tuple(i for i, c in enumerate(first.charges) if ":tpm:" in c.key)


def test_a_new_budget_window_gets_a_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter, rt = _setup()
    budgets._current.clear()
    end = calendar.timegm((2026, 12, 31, 23, 59, 59))
    monkeypatch.setattr(time, "time", lambda: end)
    before = {c.key.rsplit(":", 1)[1] for c in limiter.charges(_record("paid"), rt.table.resolve("paid")).charges
              if ":spend:" in c.key}
    monkeypatch.setattr(time, "time", lambda: end + 2)
    after = {c.key.rsplit(":", 1)[1] for c in limiter.charges(_record("paid"), rt.table.resolve("paid")).charges
             if ":spend:" in c.key}
    budgets._current.clear()
    assert before == {"m202612", "d20261231"}
    assert after == {"m202701", "d20270101"}


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter, _ = _setup()
    monkeypatch.setattr(limits, "MODEL_MEMO", 3)
    for i in range(10):
        limiter._static_for(f"m{i}")
        limiter._spend_key("global", "day", f"d{i}")
    assert len(limiter._static) <= 3 and len(limiter._keys) <= 3


@pytest.mark.parametrize(("payload", "expected"), [
    ({"max_tokens": 7}, 7), ({"max_completion_tokens": 9, "max_tokens": 7}, 9), ({"max_tokens": True}, 1024),
    ({"max_tokens": -1}, 1024), ({"max_tokens": 2.5}, 1024), ({"max_tokens": "3"}, 1024), ({}, 1024)])
def test_the_estimate_takes_only_a_token_count(payload: dict[str, object], expected: int) -> None:
    record = _record("paid")
    record.payload = payload
    assert limits._estimate(record, 1024) == (10, expected)
