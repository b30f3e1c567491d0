"""Limits a reload turns on under ``--workers N`` (no Redis) share the workers' SQLite counters file.

The parent makes the file for every ``--workers N`` server (cli/serve.py); a worker started without
limits still holds its path in its Runtime, so the limiter a reload builds counts in it, not per worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labgate.record import RequestRecord
from labgate.runtime import Runtime
from labgate.state.counters import SQLiteCounters
from labgate.testing.gateway import config_from

pytestmark = pytest.mark.asyncio
PROVIDERS = {"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "models": ["m"]}}
NO_KEYS = {"auth": {"virtual_keys": False}}  # with virtual keys on a limiter always exists (keys carry limits)


async def test_limits_turned_on_by_a_reload_count_in_the_shared_file(tmp_path: Path) -> None:
    shared = str(tmp_path / "limits.db")
    first = Runtime.build(config_from(PROVIDERS, gateway=NO_KEYS), shared_limits=shared)  # started with nothing limited
    assert first.limiter is None
    limited = config_from(PROVIDERS, gateway={**NO_KEYS, "rate_limits": {"rpm": 2}})
    # two workers reload the same config: each builds its own Runtime from its own previous one
    workers = [Runtime.build(limited, previous=first), Runtime.build(limited, previous=first)]
    for rt in workers:
        assert rt.limiter is not None and isinstance(rt.limiter.counters, SQLiteCounters)
        assert rt.limiter.counters.path == shared and rt.shared_limits == shared
    statuses = []
    for rt in (*workers, *workers):  # 4 requests alternating between the workers against rpm 2
        record = RequestRecord("r", "chat")
        record.model, record.payload, record.body = "m", {"model": "m"}, b"{}"
        try:
            await rt.limiter.reserve(record, rt.table.resolve("m"), rt.table)  # type: ignore[union-attr]
            statuses.append(200)
        except Exception as exc:
            statuses.append(getattr(exc, "status", 500))
    assert statuses == [200, 200, 429, 429]  # one limit for both workers, not rpm 2 each
    # and a second reload keeps the same file
    again = Runtime.build(limited, previous=workers[0])
    assert again.shared_limits == shared and again.limiter is not None
    for rt in (first, *workers, again):
        await rt.aclose()


async def test_a_single_process_reload_stays_in_memory() -> None:
    first = Runtime.build(config_from(PROVIDERS, gateway=NO_KEYS))
    rt = Runtime.build(config_from(PROVIDERS, gateway={**NO_KEYS, "rate_limits": {"rpm": 2}}), previous=first)
    assert rt.shared_limits is None and rt.limiter is not None and rt.limiter.counters.backend == "memory"
    await first.aclose()
    await rt.aclose()
