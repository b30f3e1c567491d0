"""``telemetry.group``: a scrape of one worker adds up the whole ``--workers N`` group."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.errors import AttemptFailure, UpstreamStatusError
from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.telemetry.group import WorkerGroup, make_group_dir, merge, remove_group_dir
from labgate.telemetry.metrics import Metrics
from labgate.testing.prometheus import parse_metrics

# durations are multiples of 1/64 s, so sums are exact whatever order they are added in
RECORDS = st.builds(
    lambda model, endpoint, status, ticks, stream, tokens, failed: _record(model, endpoint, status, ticks, stream,
                                                                          tokens, failed),
    st.sampled_from(["a", "b", "c"]), st.sampled_from(["chat", "embeddings"]), st.sampled_from([200, 429, 502]),
    st.integers(0, 64 * 200), st.booleans(), st.none() | st.tuples(st.integers(0, 99), st.integers(0, 99)),
    st.booleans())


def _record(model: str, endpoint: str, status: int, ticks: int, stream: bool, tokens: tuple[int, int] | None,
            failed: bool) -> RequestRecord:
    r = RequestRecord("req", endpoint, started=0.0)
    r.model, r.provider, r.status, r.finished, r.stream = model, "p", status, ticks / 64, stream
    if stream:
        r.first_byte = r.first_token = ticks / 128
    r.usage = None if tokens is None else Usage(*tokens)
    r.failures = [AttemptFailure(f"p/{model}", UpstreamStatusError("down", upstream_status=503))] if failed else []
    return r


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), RECORDS), max_size=40))
def test_merging_three_workers_equals_one_process_that_saw_everything(placed: list[tuple[int, RequestRecord]]) -> None:
    workers, alone = [Metrics() for _ in range(3)], Metrics()
    for worker, record in placed:
        workers[worker].observe(record)
        alone.observe(record)
    for w in workers:
        w.started = alone.started + 5
    workers[1].started = alone.started  # the earliest start is the group's
    merged = parse_metrics(merge([w.render() for w in workers]))
    expected = parse_metrics(alone.render())
    assert {name: f.samples for name, f in merged.items()} == {name: f.samples for name, f in expected.items()}
    assert list(merged) == list(expected)  # same families, same order (a scraper needs no more)


def test_a_series_only_one_worker_has_is_kept_and_the_history_counters_add_up() -> None:
    one = ("# HELP labgate_history_dropped_total d\n# TYPE labgate_history_dropped_total counter\n"
           "labgate_history_dropped_total 3\n")
    two = ("# HELP labgate_history_dropped_total d\n# TYPE labgate_history_dropped_total counter\n"
           "labgate_history_dropped_total 4\n# HELP x_total x\n# TYPE x_total counter\nx_total{a=\"1 2\"} 1.5\n")
    assert merge([one, two]) == (
        "# HELP labgate_history_dropped_total d\n# TYPE labgate_history_dropped_total counter\n"
        "labgate_history_dropped_total 7\n# HELP x_total x\n# TYPE x_total counter\n"
        'x_total{a="1 2"} 1.5\n')


@pytest.fixture
def group_dir() -> Iterator[Path]:
    path = make_group_dir(3)
    yield Path(path)
    remove_group_dir(path)
    assert not os.path.exists(path)


@pytest.mark.asyncio
async def test_gather_reads_live_siblings_and_counts_the_silent_ones(group_dir: Path) -> None:
    me, sibling = WorkerGroup(str(group_dir)), WorkerGroup(str(group_dir), timeout_s=0.5)
    sibling.path = group_dir / "sibling.sock"  # same process: a second name
    text = "# HELP c_total c\n# TYPE c_total counter\nc_total 2\n"
    await sibling.start(lambda: text)
    await me.start(lambda: "unused: I am the one scraped")
    stale = socket.socket(socket.AF_UNIX)  # a socket file nobody accepts on: a worker that is gone
    stale.bind(str(group_dir / "gone.sock"))
    try:
        out = await me.gather(text)
    finally:
        stale.close()
        await asyncio.gather(me.stop(), sibling.stop())
    samples = {k: v for f in parse_metrics(out).values() for k, v in f.samples.items()}
    assert samples == {"c_total": 4, "labgate_metrics_workers": 2, "labgate_metrics_workers_missing": 1}
    assert sorted(os.listdir(group_dir)) == ["gone.sock", "size"]  # stop() removed its own


@pytest.mark.asyncio
async def test_a_worker_that_has_not_joined_yet_is_missing(group_dir: Path) -> None:
    me = WorkerGroup(str(group_dir))
    await me.start(lambda: "")
    try:
        out = await me.gather("# HELP c_total c\n# TYPE c_total counter\nc_total 2\n")
    finally:
        await me.stop()
    assert out.endswith("labgate_metrics_workers 1\n# HELP labgate_metrics_workers_missing Workers that did not "
                        "answer this scrape in time.\n# TYPE labgate_metrics_workers_missing gauge\n"
                        "labgate_metrics_workers_missing 2\n")


@pytest.mark.asyncio
async def test_a_worker_knows_when_it_renders_for_a_sibling(group_dir: Path) -> None:
    """Its in-flight count then leaves nothing out: the sibling's scrape is not one of its requests."""
    from labgate.telemetry.group import FOR_SIBLING

    me, sibling = WorkerGroup(str(group_dir)), WorkerGroup(str(group_dir))
    sibling.path = group_dir / "sibling.sock"

    def render() -> str:
        return f"# HELP s s\n# TYPE s gauge\ns {int(FOR_SIBLING.get())}\n"

    await sibling.start(render)
    await me.start(render)
    try:
        out = await me.gather(render())
    finally:
        await asyncio.gather(me.stop(), sibling.stop())
    assert "\ns 1\n" in out  # 0 from the scraped worker itself, 1 from the sibling's answer
    assert FOR_SIBLING.get() is False
