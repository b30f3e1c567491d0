"""The history writer: bounded queue, batches, drops counted, retries, shutdown flush, retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from labgate.record import RequestRecord
from labgate.store.base import Row
from labgate.store.sqlite import SQLITE
from labgate.store.writer import HistoryWriter


class FakeStore:
    """A store in memory; ``fail`` decides, per write, whether it raises."""

    dialect = SQLITE
    display_url = "memory"

    def __init__(self, fail: Callable[[Sequence[Row]], bool] = lambda rows: False, *, delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail
        self.delay = delay
        self.opened = 0
        self.closed = False
        self.executed: list[tuple[str, tuple[Any, ...]]] = []
        self.open_fails = 0

    async def open(self) -> None:
        if self.open_fails:
            self.open_fails -= 1
            raise ConnectionRefusedError("store down")
        self.opened += 1

    async def write(self, rows: Sequence[Row]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail(rows):
            raise ConnectionError("write failed")
        self.batches.append([r[0] for r in rows])

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return []

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.executed.append((sql, tuple(params)))
        return 0

    async def aclose(self) -> None:
        self.closed = True

    @property
    def written(self) -> list[str]:
        return [rid for batch in self.batches for rid in batch]


def rec(n: int) -> RequestRecord:
    r = RequestRecord(f"req-{n}", "chat", started=1.0, timestamp=1000.0 + n)
    r.finished = 1.1
    return r


@pytest.mark.asyncio
async def test_batches_of_batch_size_in_order_then_close_writes_the_rest() -> None:
    store = FakeStore()
    writer = HistoryWriter(store, batch_size=4, flush_interval_s=30)
    await writer.start()
    for n in range(10):
        writer.put(rec(n))
    await asyncio.sleep(0.05)  # the 4th record woke the task; it wrote everything queued by then
    assert store.written == [f"req-{n}" for n in range(10)]
    assert [len(b) for b in store.batches] == [4, 4, 2]
    writer.put(rec(10))
    await writer.close()
    assert store.written[-1] == "req-10" and store.closed
    assert writer.stats() == {"store": "memory", "capture": "full", "writer": "thread", "ready": True, "queued": 0,
                              "queue_size": 20000,
                              "written": 11, "dropped": 0, "rejected": 0, "failed_writes": 0, "purged": 0,
                              "last_error": None}


@pytest.mark.asyncio
async def test_flush_interval_writes_a_partial_batch() -> None:
    store = FakeStore()
    writer = HistoryWriter(store, batch_size=100, flush_interval_s=0.05)
    await writer.start()
    writer.put(rec(1))
    await asyncio.sleep(0.2)
    assert store.batches == [["req-1"]]
    await writer.close()


@pytest.mark.asyncio
async def test_a_full_queue_drops_counts_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    writer = HistoryWriter(store, queue_size=3, batch_size=100, flush_interval_s=30)
    await writer.start()
    with caplog.at_level(logging.WARNING, logger="labgate.store"):
        for n in range(8):
            writer.put(rec(n))
    assert writer.dropped == 5
    warnings = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert warnings == ["history queue full (3 records): dropped 1 record(s) since the last warning, 1 in total; "
                        "the store is not keeping up (no write error)"]
    assert "labgate_history_dropped_total 5" in writer.prometheus()
    await writer.close()
    assert store.written == ["req-0", "req-1", "req-2"]


@pytest.mark.asyncio
async def test_a_failed_write_is_retried_without_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.01,))
    failures = iter([True, False])
    store = FakeStore(fail=lambda rows: next(failures, False))
    writer = HistoryWriter(store, batch_size=2, flush_interval_s=0.01)
    await writer.start()
    for n in range(5):
        writer.put(rec(n))
    await asyncio.sleep(0.3)
    await writer.close()
    assert store.written == [f"req-{n}" for n in range(5)]
    assert (writer.written, writer.failed_writes, writer.last_error) == (5, 1, None)


@pytest.mark.asyncio
async def test_a_bad_row_is_rejected_after_retries_and_the_rest_written(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.01,))
    store = FakeStore(fail=lambda rows: any(r[0] == "req-2" for r in rows))
    writer = HistoryWriter(store, batch_size=10, flush_interval_s=0.01)
    await writer.start()
    for n in range(5):
        writer.put(rec(n))
    await asyncio.sleep(0.3)
    await writer.close()
    assert sorted(store.written) == ["req-0", "req-1", "req-3", "req-4"]
    assert (writer.rejected, writer.written) == (1, 4)
    assert "the store refused 1 record(s), e.g. request req-2" in caplog.text


@pytest.mark.asyncio
async def test_a_store_that_is_down_loses_nothing_that_fits_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.02,))
    down = True
    store = FakeStore(fail=lambda rows: down)
    store.open_fails = 2
    writer = HistoryWriter(store, batch_size=3, flush_interval_s=0.01)
    await writer.start()  # does not raise: the gateway serves while history waits
    for n in range(7):
        writer.put(rec(n))
    await asyncio.sleep(0.2)
    assert store.written == [] and writer.stats()["queued"] == 7
    assert "write failed" in (writer.last_error or "")
    down = False
    await asyncio.sleep(0.2)
    assert store.written == [f"req-{n}" for n in range(7)]
    await writer.close()


@pytest.mark.asyncio
async def test_close_gives_up_after_its_timeout(caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.05,))
    store = FakeStore(fail=lambda rows: True)
    writer = HistoryWriter(store, batch_size=100, flush_interval_s=30)
    await writer.start()
    writer.put(rec(1))
    await writer.close(timeout=0.2)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "history: 1 record(s) could not be written before shutdown and are lost"]
    assert store.closed


@pytest.mark.asyncio
async def test_close_waits_for_a_batch_in_flight_and_never_writes_it_twice() -> None:
    store = FakeStore(delay=0.1)
    writer = HistoryWriter(store, batch_size=2, flush_interval_s=30)
    await writer.start()
    writer.put(rec(1))
    writer.put(rec(2))
    await asyncio.sleep(0.02)  # the batch is being written
    writer.put(rec(3))
    await writer.close()
    assert store.written == ["req-1", "req-2", "req-3"]


@pytest.mark.asyncio
async def test_retention_purges_periodically() -> None:
    store = FakeStore()
    writer = HistoryWriter(store, retention_days=2, purge_every_s=0.05, flush_interval_s=0.01)
    await writer.start()
    await asyncio.sleep(0.2)
    await writer.close()
    assert len(store.executed) >= 2
    sql, params = store.executed[0]
    assert sql.startswith("DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE timestamp < ?")
    import time

    assert abs(params[0] - (time.time() - 2 * 86400)) < 5


@pytest.mark.asyncio
async def test_no_retention_means_no_purge() -> None:
    store = FakeStore()
    writer = HistoryWriter(store, flush_interval_s=0.01)
    await writer.start()
    await asyncio.sleep(0.05)
    assert await writer.purge() == 0
    await writer.close()
    assert store.executed == []


@pytest.mark.asyncio
async def test_an_unreachable_postgres_does_not_stop_the_gateway(caplog: pytest.LogCaptureFixture) -> None:
    from labgate.store.postgres import PostgresStore

    writer = HistoryWriter(PostgresStore("postgresql://postgres@127.0.0.1:9/nothing"), flush_interval_s=0.01)
    await writer.start(open_timeout=5)  # refused at once: logged, retried in the background
    writer.put(rec(1))
    await asyncio.sleep(0.05)
    stats = writer.stats()
    assert (stats["ready"], stats["queued"], stats["store"]) == (False, 1, "postgresql://postgres@127.0.0.1:9/nothing")
    assert (stats["last_error"] or "").startswith("open: ")
    await writer.close(timeout=0.3)
    assert "1 record(s) could not be written before shutdown and are lost" in caplog.text


@pytest.mark.asyncio
async def test_a_store_that_fails_to_close_is_logged_once_with_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()

    async def broken_close() -> None:
        raise OSError("database is locked")

    store.aclose = broken_close  # type: ignore[method-assign]
    writer = HistoryWriter(store, batch_size=4, flush_interval_s=30)
    await writer.start()
    writer.put(rec(1))
    with caplog.at_level(logging.ERROR, logger="labgate.store"):
        await writer.close()
    assert store.written == ["req-1"]
    assert [(r.getMessage(), repr(r.exc_info[1]) if r.exc_info else None) for r in caplog.records] == [
        ("history: closing memory failed", "OSError('database is locked')")]


def test_the_counters_in_the_prometheus_text_format() -> None:
    """The whole exposition, checked by the strict parser (HELP and TYPE per family, one sample each)."""
    from labgate.store.writer import prometheus_text
    from labgate.testing.prometheus import parse_metrics

    stats = {"written": 7, "dropped": 2, "rejected": 1, "failed_writes": 3, "queued": 5}
    text = prometheus_text(stats)
    assert text == (
        "# HELP labgate_history_written_total History records written.\n"
        "# TYPE labgate_history_written_total counter\nlabgate_history_written_total 7\n"
        "# HELP labgate_history_dropped_total History records dropped because the queue was full.\n"
        "# TYPE labgate_history_dropped_total counter\nlabgate_history_dropped_total 2\n"
        "# HELP labgate_history_rejected_total History records the store refused.\n"
        "# TYPE labgate_history_rejected_total counter\nlabgate_history_rejected_total 1\n"
        "# HELP labgate_history_write_failures_total Failed batch writes.\n"
        "# TYPE labgate_history_write_failures_total counter\nlabgate_history_write_failures_total 3\n"
        "# HELP labgate_history_queued History records waiting to be written.\n"
        "# TYPE labgate_history_queued gauge\nlabgate_history_queued 5\n")
    families = parse_metrics(text)
    assert {name: (f.kind, f.samples) for name, f in families.items()} == {
        "labgate_history_written_total": ("counter", {"labgate_history_written_total": 7.0}),
        "labgate_history_dropped_total": ("counter", {"labgate_history_dropped_total": 2.0}),
        "labgate_history_rejected_total": ("counter", {"labgate_history_rejected_total": 1.0}),
        "labgate_history_write_failures_total": ("counter", {"labgate_history_write_failures_total": 3.0}),
        "labgate_history_queued": ("gauge", {"labgate_history_queued": 5.0})}


# --- from the config; records that arrive in wire form; purge in chunks; a close that has to cut --------------


@pytest.mark.asyncio
async def test_the_writer_the_store_config_asks_for(tmp_path: Path) -> None:
    from labgate.config.schema.store import StoreConfig
    from labgate.store.process import WriterProcess
    from labgate.store.writer import history_for

    assert history_for(StoreConfig(capture="none")) is None
    assert HistoryWriter.from_config(StoreConfig(capture="none")) is None
    process = history_for(StoreConfig(url="p.db"), source=str(tmp_path))  # relative: to the config directory
    assert isinstance(process, WriterProcess) and process.store.display_url == str(tmp_path / "p.db")
    config = StoreConfig(url="h.db", writer="thread", capture="metadata", queue_size=7, batch_size=3,
                         flush_interval_s=2.0, client_ip=False, retention_days=2)
    writer = history_for(config, source=str(tmp_path))  # a relative path is the config directory's
    assert isinstance(writer, HistoryWriter)
    stats = writer.stats()
    assert (stats["store"], stats["capture"], stats["queue_size"], writer.keeps_content) == (
        str(tmp_path / "h.db"), "metadata", 7, False)


@pytest.mark.asyncio
async def test_a_writer_from_config_keeps_its_settings(tmp_path: Path) -> None:
    """Batch size, client address, retention: what ``store:`` says reaches the rows and the purge."""
    from labgate.config.schema.store import StoreConfig
    from labgate.store.schema import NAMES

    config = StoreConfig(url=str(tmp_path / "h.db"), writer="thread", batch_size=2, client_ip=False,
                         retention_days=3)
    writer = HistoryWriter.from_config(config)
    assert writer is not None
    store = FakeStore()
    writer.store = store  # type: ignore[assignment]
    r = rec(1)
    r.client_ip = "10.0.0.1"
    writer.put(r)
    writer.put(rec(2))
    writer.put(rec(3))
    await writer.flush()
    assert [len(b) for b in store.batches] == [2, 1]
    assert await writer.purge() == 0
    ((_, (cutoff,)),) = store.executed
    import time

    assert abs(cutoff - (time.time() - 3 * 86400)) < 5
    written: list[Row] = []

    async def keep(rows: Sequence[Row]) -> None:
        written.extend(rows)

    store.write = keep  # type: ignore[method-assign]
    writer.put(r)
    await writer.flush()
    assert dict(zip(NAMES, written[0], strict=True))["client_ip"] is None
    store = RowStore()
    writer = HistoryWriter.from_config(StoreConfig(url=str(tmp_path / "h.db"), writer="thread", flush_interval_s=0.02))
    assert writer is not None
    writer.store = store  # type: ignore[assignment]
    await writer.start()
    writer.put(r)  # far less than a batch (500): written at the interval
    await asyncio.sleep(0.2)
    assert [(row["request_id"], row["client_ip"]) for row in store.rows] == [("req-1", "10.0.0.1")]
    await writer.close()


@pytest.mark.asyncio
async def test_records_in_wire_form_fill_the_queue_up_to_its_bound_then_are_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    """``accept`` (the writer process): what does not fit, counting the batch being retried, is dropped and told."""
    from labgate.store.capture import wire

    store = FakeStore(fail=lambda rows: True)
    writer = HistoryWriter(store, queue_size=5, batch_size=2, flush_interval_s=30)
    changes: list[int] = []
    writer.on_change = lambda: changes.append(writer.dropped)
    writer.accept([wire(rec(n), keep_content=False) for n in range(2)])
    with pytest.raises(ConnectionError):
        await writer.flush()  # the two are now a batch being retried
    assert (writer.stats()["queued"], changes) == (2, [])
    with caplog.at_level(logging.WARNING, logger="labgate.store"):
        writer.accept([wire(rec(n), keep_content=False) for n in range(2, 7)])
    assert (writer.dropped, writer.stats()["queued"], changes) == (2, 5, [2])
    assert [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()] == [
        "history queue full (5 records): dropped 2 record(s) since the last warning, 2 in total; "
        "the store is not keeping up (no write error)"]  # flush() raises: only the task records errors
    writer.accept([])
    assert changes == [2]  # nothing dropped: nothing to tell
    writer.accept([wire(rec(9), keep_content=False)])
    assert (writer.dropped, writer.stats()["queued"], changes) == (3, 5, [2, 3])  # full: not even one more
    store.fail = lambda rows: False
    await writer.flush()
    assert store.written == [f"req-{n}" for n in range(5)]


@pytest.mark.asyncio
async def test_a_batch_of_wire_records_wakes_the_writer() -> None:
    from labgate.store.capture import wire

    store = FakeStore()
    writer = HistoryWriter(store, batch_size=3, flush_interval_s=30)
    await writer.start()
    await asyncio.sleep(0.02)  # the task waits for a batch
    writer.accept([wire(rec(n), keep_content=False) for n in range(2)])
    await asyncio.sleep(0.05)
    assert store.written == []  # less than a batch: waits for the interval
    writer.accept([wire(rec(2), keep_content=False)])
    await asyncio.sleep(0.05)
    assert store.batches == [["req-0", "req-1", "req-2"]]
    await writer.close()


class PurgingStore(FakeStore):
    """Deletes ``rows`` old rows, at most a chunk per statement."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        await super().execute(sql, params)
        deleted = min(self.rows, int(sql.rsplit("LIMIT ", 1)[1].rstrip(")")))
        self.rows -= deleted
        return deleted


@pytest.mark.asyncio
async def test_a_purge_deletes_in_chunks_until_a_short_one(caplog: pytest.LogCaptureFixture) -> None:
    store = PurgingStore(rows=10_003)
    writer = HistoryWriter(store, retention_days=1.5)
    with caplog.at_level(logging.INFO, logger="labgate.store"):
        assert await writer.purge() == 10_003
    assert [sql.rsplit("LIMIT ", 1)[1] for sql, _ in store.executed] == ["5000)", "5000)", "5000)"]
    assert (writer.purged, writer.stats()["purged"]) == (10_003, 10_003)
    assert [r.getMessage() for r in caplog.records] == ["history: purged 10003 record(s) older than 1.5 days"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="labgate.store"):
        assert await writer.purge() == 0
    assert (writer.purged, caplog.records) == (10_003, [])  # nothing purged: nothing said


@pytest.mark.asyncio
async def test_close_cuts_a_write_that_hangs_past_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """The task's batch is cancelled at the timeout, kept, and counted as lost; the store is still closed."""
    store = FakeStore(delay=30)
    writer = HistoryWriter(store, batch_size=2, flush_interval_s=30)
    await writer.start()
    writer.put(rec(1))
    writer.put(rec(2))
    await asyncio.sleep(0.02)  # the task is writing them
    loop = asyncio.get_running_loop()
    started = loop.time()
    await writer.close(timeout=0.2)
    assert loop.time() - started < 5 and store.closed
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "history: 2 record(s) could not be written before shutdown and are lost"]
    assert writer.stats()["queued"] == 2
    assert "labgate-history-writer" not in {t.get_name() for t in asyncio.all_tasks()}  # cancelled, not left behind
    await writer.close(timeout=0.1)  # a second close: nothing left to stop


@pytest.mark.asyncio
async def test_close_retries_the_final_flush_with_backoff_until_it_succeeds(monkeypatch: pytest.MonkeyPatch,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.01, 0.02))
    failures = iter([True, True])
    store = FakeStore(fail=lambda rows: next(failures, False))
    writer = HistoryWriter(store, batch_size=100, flush_interval_s=30)
    writer.put(rec(1))  # never started: close writes it all the same
    with caplog.at_level(logging.WARNING, logger="labgate.store"):
        await writer.close(timeout=5)
    assert (store.written, writer.written, writer.failed_writes, store.opened) == (["req-1"], 1, 2, 1)
    assert [r.getMessage() for r in caplog.records] == [
        "history: final flush failed on memory: final flush: ConnectionError: write failed"] * 2


@pytest.mark.asyncio
async def test_a_batch_that_goes_in_row_by_row_once_the_store_is_back_is_written_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Three failed attempts, then the store recovers: every row goes in, none refused, none written twice."""
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.01,))
    failures = iter([True, True, True])
    store = FakeStore(fail=lambda rows: next(failures, False))
    writer = HistoryWriter(store, batch_size=2, flush_interval_s=0.01)
    await writer.start()
    writer.put(rec(1))
    writer.put(rec(2))
    await asyncio.sleep(0.3)
    assert (store.batches, writer.written, writer.rejected, writer.last_error) == (
        [["req-1"], ["req-2"]], 2, 0, None)
    assert "refused" not in caplog.text
    await writer.close()


class RowStore(FakeStore):
    """Keeps the rows themselves, by column name."""

    def __init__(self, fail: Callable[[Sequence[Row]], bool] = lambda rows: False) -> None:
        super().__init__(fail)
        self.rows: list[dict[str, Any]] = []

    async def write(self, rows: Sequence[Row]) -> None:
        from labgate.store.schema import NAMES

        await super().write(rows)
        self.rows += [dict(zip(NAMES, row, strict=True)) for row in rows]


@pytest.mark.asyncio
async def test_what_a_row_keeps_follows_the_writers_capture_and_client_ip() -> None:
    def chat(n: int) -> RequestRecord:
        r = rec(n)
        r.client_ip, r.payload = "10.0.0.1", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        return r

    for writer, capture, messages, ip in (
            (HistoryWriter(RowStore()), "full", '[{"role":"user","content":"hi"}]', "10.0.0.1"),  # the defaults
            (HistoryWriter(RowStore(), capture="metadata", client_ip=False), "metadata", None, None)):
        writer.put(chat(1))
        await writer.flush()
        (row,) = writer.store.rows  # type: ignore[attr-defined]
        assert (row["capture"], row["messages"], row["client_ip"]) == (capture, messages, ip)
        assert writer.keeps_content is (capture == "full")
    assert HistoryWriter(RowStore()).stats()["last_error"] is None


def test_a_full_queue_warns_at_most_every_ten_seconds_with_the_count_since_the_last(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from labgate.store.writer import DropWarning

    clock = iter([0.5, 5.0, 9.0, 10.5, 20.5, 20.6])
    monkeypatch.setattr("labgate.store.writer.time.monotonic", lambda: next(clock))
    warning = DropWarning(queue_size=3)
    with caplog.at_level(logging.WARNING, logger="labgate.store"):
        for count in (1, 2, 3, 1, 4, 1):
            warning.add(count, lambda: (99, None))
    assert [r.getMessage().split(": ")[1].split(";")[0] for r in caplog.records] == [
        "dropped 1 record(s) since the last warning, 99 in total",  # at 0.5 (the first drop warns at once)
        "dropped 6 record(s) since the last warning, 99 in total",  # at 10.5: 10 s after, exactly
        "dropped 4 record(s) since the last warning, 99 in total"]  # at 20.5


@pytest.mark.asyncio
async def test_what_is_put_counts_as_queued_before_it_becomes_a_row() -> None:
    writer = HistoryWriter(FakeStore(), batch_size=3, flush_interval_s=30)
    await writer.start()
    writer.put(rec(1))
    writer.put(rec(2))
    assert writer.stats()["queued"] == 2  # still in this turn of the loop: not converted yet
    await asyncio.sleep(0.05)
    assert (writer.stats()["queued"], writer.store.written) == (2, [])  # type: ignore[attr-defined]
    writer.put(rec(3))  # exactly a batch: the task wakes
    await asyncio.sleep(0.05)
    assert (writer.stats()["queued"], writer.store.written) == (0, ["req-1", "req-2", "req-3"])  # type: ignore[attr-defined]
    await writer.close()


@pytest.mark.asyncio
async def test_a_batch_that_arrives_during_a_purge_is_written_right_after_it() -> None:
    """The task clears its wake-up before it sleeps: a full batch already queued is written, not left to wait."""

    class SlowPurge(FakeStore):
        async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
            await asyncio.sleep(0.1)
            return await super().execute(sql, params)

    store = SlowPurge()
    writer = HistoryWriter(store, batch_size=2, flush_interval_s=30, retention_days=1)
    await writer.start()
    await asyncio.sleep(0.03)  # purging
    writer.put(rec(1))
    writer.put(rec(2))
    await asyncio.sleep(0.3)
    assert store.written == ["req-1", "req-2"]
    await writer.close()


@pytest.mark.asyncio
async def test_a_batch_is_tried_three_times_before_row_by_row_and_the_count_restarts_per_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.01,))
    failures = [True, True, False, True, False, True, True, False, True, True, True]
    store = FakeStore(fail=lambda rows: failures.pop(0) if failures else False)
    writer = HistoryWriter(store, batch_size=2, flush_interval_s=30)
    for n in range(1, 9):
        writer.put(rec(n))
        if n % 2 == 0:  # one batch at a time
            for _ in range(3):
                with contextlib.suppress(ConnectionError):
                    await writer.flush()
    assert store.batches == [["req-1", "req-2"], ["req-3", "req-4"], ["req-5", "req-6"], ["req-7"], ["req-8"]]


@pytest.mark.asyncio
async def test_rows_refused_are_counted_across_batches_and_a_store_down_keeps_its_own_error(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.01,))
    store = FakeStore(fail=lambda rows: any(r[0] in ("req-2", "req-4") for r in rows))
    writer = HistoryWriter(store, batch_size=2, flush_interval_s=0.01)
    await writer.start()
    for n in range(1, 5):
        writer.put(rec(n))
    await asyncio.sleep(0.3)
    assert (writer.rejected, store.written) == (2, ["req-1", "req-3"])
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "history: the store refused 1 record(s), e.g. request req-2: write failed",
        "history: the store refused 1 record(s), e.g. request req-4: write failed"]
    await writer.close()
    down = HistoryWriter(FakeStore(fail=lambda rows: True), batch_size=1, flush_interval_s=0.01)
    down.store.open_fails = 1  # type: ignore[attr-defined]
    await down.start()
    assert (down.failed_writes, down.last_error) == (0, "open: ConnectionRefusedError: store down")  # not a write
    down.put(rec(1))
    await asyncio.sleep(0.2)  # one row, tried as a batch and alone: the store's own error, not a lookup's
    assert (down.rejected, down.last_error) == (0, "write: ConnectionError: write failed")
    await down.close(timeout=0.1)


@pytest.mark.asyncio
async def test_close_backs_off_between_final_flushes_and_gives_up_when_the_next_wait_passes_its_timeout(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Waits 0.01 s five times, then the sixth wait (the last backoff, 5 s) would pass the 1 s timeout: lost."""
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.01, 0.01, 0.01, 0.01, 0.01, 5.0))
    store = FakeStore(fail=lambda rows: True)
    writer = HistoryWriter(store, batch_size=100, flush_interval_s=30)
    writer.put(rec(1))
    await writer.close(timeout=1.0)
    assert (store.written, writer.failed_writes) == ([], 6)
    assert "history: 1 record(s) could not be written before shutdown and are lost" in caplog.text


@pytest.mark.asyncio
async def test_the_first_final_flush_waits_the_first_backoff(caplog: pytest.LogCaptureFixture) -> None:
    """The real backoffs: 0.5 s fits a 0.9 s timeout (the record is written), the second one (1 s) would not."""
    failures = [True]
    store = FakeStore(fail=lambda rows: failures.pop(0) if failures else False)
    writer = HistoryWriter(store, batch_size=100, flush_interval_s=30)
    writer.put(rec(1))
    await writer.close(timeout=0.9)
    assert (store.written, writer.failed_writes) == (["req-1"], 1)


@pytest.mark.asyncio
async def test_the_background_task_backs_off_longer_after_each_failure_and_reopens_the_store(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.01, 30.0))
    store = FakeStore()
    store.open_fails = 2  # at start, and the task's first attempt
    writer = HistoryWriter(store, batch_size=1, flush_interval_s=30)
    writer.put(rec(1))
    with caplog.at_level(logging.INFO, logger="labgate.store"):
        await writer.start()
        assert "labgate-history-writer" in {t.get_name() for t in asyncio.all_tasks()}
        await asyncio.sleep(0.2)  # one failure: the first backoff (0.01 s), then open and write
    assert (store.written, store.opened, writer.stats()["ready"], writer.last_error) == (["req-1"], 1, True, None)
    assert [r.getMessage() for r in caplog.records if r.levelname == "INFO"] == [
        "history: writing to memory (capture: full)"]
    failures = [True]
    store.fail = lambda rows: failures.pop(0) if failures else False
    writer.put(rec(2))
    await asyncio.sleep(0.2)  # after a success the count starts again: the first backoff again
    assert store.written == ["req-1", "req-2"]
    failures += [True, True]
    writer.put(rec(3))
    await asyncio.sleep(0.2)  # two failures in a row: the second backoff (30 s)
    assert (store.written, writer.failed_writes) == (["req-1", "req-2"], 3)
    await writer.close(timeout=1)


@pytest.mark.asyncio
async def test_an_open_that_hangs_at_start_is_cut_at_its_timeout() -> None:
    class Hanging(FakeStore):
        async def open(self) -> None:
            await asyncio.sleep(30)

    writer = HistoryWriter(Hanging(), flush_interval_s=30)
    await asyncio.wait_for(writer.start(open_timeout=0.05), 5)
    assert (writer.stats()["ready"], writer.last_error, writer.failed_writes) == (False, "open: TimeoutError: ", 0)
    await writer.close(timeout=0.1)


@pytest.mark.asyncio
async def test_the_purge_runs_once_per_period_not_at_every_turn() -> None:
    store = FakeStore()
    writer = HistoryWriter(store, retention_days=1, flush_interval_s=0.01)  # purge every hour (the default)
    await writer.start()
    await asyncio.sleep(0.2)  # ~20 turns of the task
    await writer.close()
    assert len(store.executed) == 1


@pytest.mark.asyncio
async def test_wire_records_take_the_room_left_in_the_queue_and_keep_the_writers_settings() -> None:
    from labgate.store.capture import wire

    store = RowStore()
    writer = HistoryWriter(store, capture="metadata", queue_size=5, batch_size=100)
    r = rec(1)
    r.client_ip = "10.0.0.1"
    writer.accept([wire(r, keep_content=False), wire(rec(2), keep_content=False)])
    writer.accept([wire(rec(n), keep_content=False) for n in range(3, 9)])  # 3 of 6 fit beside the 2 queued
    assert (writer.dropped, writer.stats()["queued"]) == (3, 5)
    await writer.flush()
    assert [(row["request_id"], row["capture"], row["client_ip"]) for row in store.rows][:2] == [
        ("req-1", "metadata", "10.0.0.1"), ("req-2", "metadata", None)]
    assert store.written == ["req-1", "req-2", "req-3", "req-4", "req-5"]


@pytest.mark.asyncio
async def test_a_store_that_opens_after_failing_clears_the_error_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readiness reads ``last_error``: once the store opens it is over, before any row is written."""
    monkeypatch.setattr("labgate.store.writer._BACKOFF_S", (0.01,))
    store = FakeStore()
    store.open_fails = 1
    writer = HistoryWriter(store, flush_interval_s=30)
    await writer.start()
    assert writer.last_error == "open: ConnectionRefusedError: store down"
    await asyncio.sleep(0.1)
    assert (writer.stats()["ready"], writer.stats()["last_error"], store.batches) == (True, None, [])
    await writer.close()
