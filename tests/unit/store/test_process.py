"""The history writer process: records shipped to a child that writes them to a real SQLite file.

Most tests start real writer processes (``python -m labgate.store.process``)
and check, after closing them, that none is left behind. The child's own code
(``main``, ``_serve``, ``_Reports``) is also run in this process, on real pipes
(the last section), where in-process tools such as mutation testing reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import marshal
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pytest

from labgate.config.schema.store import StoreConfig
from labgate.errors import HistoryUnavailableError
from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.store import store_for
from labgate.store.capture import row_from_wire, wire
from labgate.store.process import WriterProcess, _Child, _Reports, _serve, main
from labgate.store.schema import NAMES
from labgate.store.writer import HistoryWriter, history_for

# the suite's own bound (pyproject.toml), kept when `make mutate` asks for 120 s: a mutant that makes a flush
# wait forever costs a minute, not two
pytestmark = pytest.mark.timeout(60)

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "What is the SECRET capital of France?"}],
        "temperature": 0.2, "max_tokens": 64, "stream": False}
REPLY = orjson.dumps({"id": "c1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Paris, in confidence."}, "finish_reason": "stop"}]})


def rec(n: int) -> RequestRecord:
    r = RequestRecord(f"req-{n}", "chat", "10.0.0.7", started=1.0, timestamp=1_700_000_000.0 + n)
    r.model, r.provider, r.status, r.usage, r.finished = "m1", "p1", 200 + n % 2, Usage(n, 2 * n), 1.25
    return r


def chat_rec(n: int) -> RequestRecord:
    r = rec(n)
    r.payload, r.reply = CHAT, REPLY
    return r


def rows(path: Path, columns: str = "request_id") -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"SELECT {columns} FROM requests ORDER BY id").fetchall()


def writer_children() -> list[int]:
    """Pids of this process's children that are writer processes (zombies included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if ppid == os.getpid() and b"labgate.store.process" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cpus_allowed(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    before = set(writer_children())  # session-scoped gateways elsewhere in the suite have their own
    yield
    assert set(writer_children()) - before == set()


@contextlib.asynccontextmanager
async def running(writer: WriterProcess, close_timeout: float = 5.0) -> AsyncIterator[WriterProcess]:
    """A started writer, closed at the end whatever happens (a stopped child is continued first)."""
    await writer.start()
    try:
        yield writer
    finally:
        pid = writer.stats()["pid"]
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await writer.close(timeout=close_timeout)


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_flush_writes_everything_then_close_ends_the_child(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with running(WriterProcess(str(path))) as writer:
        for n in range(1000):
            writer.put(rec(n))
        await writer.flush()
        assert rows(path, "request_id, timestamp, endpoint, model, provider, status, prompt_tokens, "
                          "completion_tokens, tokens_used, response_time_ms, client_ip, capture") == [
            (f"req-{n}", 1_700_000_000.0 + n, "chat", "m1", "p1", 200 + n % 2, n, 2 * n, 3 * n, 250.0,
             "10.0.0.7", "metadata") for n in range(1000)]
        pid = writer.stats()["pid"]
        assert isinstance(pid, int) and pid != os.getpid() and alive(pid)
        assert writer.stats()["ready"] is True
    assert not alive(pid)
    stats = writer.stats()
    assert (stats["pid"], stats["written"], stats["dropped"], stats["queued"], stats["restarts"]) == (
        None, 1000, 0, 0, 0)
    assert "labgate_history_written_total 1000" in writer.prometheus()


@pytest.mark.asyncio
async def test_close_without_flush_writes_everything_put(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    writer = WriterProcess(str(path))
    writer.put(rec(0))  # before start: kept until the child is there
    async with running(writer):
        for n in range(1, 301):  # the child is still starting: nothing has been written yet
            writer.put(rec(n))
    assert rows(path) == [(f"req-{n}",) for n in range(301)]
    assert (writer.stats()["written"], writer.stats()["dropped"], writer.stats()["queued"]) == (301, 0, 0)


@pytest.mark.asyncio
async def test_close_right_after_puts_on_a_warm_child(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with running(WriterProcess(str(path), send_interval_s=10.0)) as writer:
        writer.put(rec(0))
        await writer.flush()
        for n in range(1, 4):  # waiting for a send 10 s away: close sends them
            writer.put(rec(n))
    assert rows(path) == [(f"req-{n}",) for n in range(4)]


@pytest.mark.asyncio
async def test_a_lone_record_is_sent_after_the_send_interval(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with running(WriterProcess(str(path), flush_interval_s=0.01)) as writer:
        writer.put(rec(0))  # no flush: only the send timer takes it to the child
        await wait_for(lambda: writer.stats()["written"] == 1)  # a hang guard, not a timing
    assert rows(path) == [("req-0",)]


@pytest.mark.asyncio
async def test_a_full_batch_is_sent_at_once(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with running(WriterProcess(str(path), batch_size=2, flush_interval_s=0.01, send_interval_s=3600)) as writer:
        await writer.flush()  # the child is up
        writer.put(rec(0))
        writer.put(rec(1))  # the batch is full: sent now, not in an hour
        await wait_for(lambda: writer.stats()["written"] == 2)  # a hang guard, not a timing
    assert rows(path) == [("req-0",), ("req-1",)]


def test_records_waiting_for_a_child_count_against_the_queue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = WriterProcess(str(tmp_path / "h.db"), queue_size=3)  # not started: no child to send to
    with caplog.at_level(logging.WARNING, logger="labgate.store"):
        for n in range(5):
            writer.put(rec(n))
    stats = writer.stats()
    assert (stats["queued"], stats["dropped"], stats["written"]) == (3, 2, 0)
    assert [r.getMessage() for r in caplog.records] == [  # the next one waits 10 s
        "history queue full (3 records): dropped 1 record(s) since the last warning, 1 in total; "
        "the store is not keeping up (no write error)"]


@pytest.mark.asyncio
async def test_flush_after_close_says_the_writer_is_closed(tmp_path: Path) -> None:
    async with running(WriterProcess(str(tmp_path / "h.db"))) as writer:
        await writer.flush()
    with pytest.raises(HistoryUnavailableError, match=r"^the history writer is closed$"):
        await writer.flush()


@pytest.mark.asyncio
async def test_a_new_child_counts_nothing(tmp_path: Path) -> None:
    async with running(WriterProcess(str(tmp_path / "h.db"))) as writer:
        stats = writer.stats()  # most likely before the child's first report: its counts start at zero
        assert [stats[name] for name in ("written", "dropped", "rejected", "failed_writes", "purged", "queued")] == [
            0] * 6


@pytest.mark.asyncio
async def test_the_gateway_reads_the_childs_reports_however_the_pipe_splits_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The gateway's side of the reports (``_Child.pipe_data_received``, private) fed what a child writes, cut
    where a pipe may cut it, with a line that is not JSON; ten records sent to it (``_sent``, private)."""
    writer = WriterProcess(str(tmp_path / "h.db"))
    child = _Child(writer)
    writer._child, writer._sent, writer._in_flight = child, 10, 10
    line = orjson.dumps({"report": {"ready": True, "written": 3, "dropped": 2, "rejected": 1, "failed_writes": 4,
                                    "purged": 5, "last_error": "write: OSError: disk full"}}) + b"\n"
    unreadable = b"Traceback (most recent call last): " + b"x" * 300
    late = orjson.dumps({"report": {"ready": True, "written": 4, "dropped": 2, "rejected": 1, "failed_writes": 4,
                                    "purged": 5, "last_error": None}, "flushed": 99})  # a flush nobody awaits
    with caplog.at_level(logging.WARNING, logger="labgate.store"):
        child.pipe_data_received(1, line[:20])
        assert writer.stats()["queued"] == 10  # half a line: nothing yet
        child.pipe_data_received(1, line[20:] + unreadable + b"\n" + late + b"\n")  # one read, three lines
    stats = writer.stats()
    del stats["store"]
    assert stats == {"capture": "metadata", "writer": "process", "pid": None, "ready": False, "queued": 3,
                     "queue_size": 20_000, "written": 4, "dropped": 2, "rejected": 1, "failed_writes": 4,
                     "purged": 5, "last_error": None, "restarts": 0}
    assert [r.getMessage() for r in caplog.records] == [  # the first 200 bytes of it
        f"history: unreadable line from the writer process: {unreadable[:200]!r}"]


class FakeProcess:
    """The part of asyncio's subprocess transport a ``_Child`` uses, with its stdin pipe's (``writelines``)."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.returncode: int | None = None
        self.closed = False

    def get_pid(self) -> int:
        return 4242

    def get_pipe_transport(self, fd: int) -> Any:
        return self if fd == 0 else None

    def get_returncode(self) -> int | None:
        return self.returncode

    def writelines(self, parts: list[bytes]) -> None:
        self.written += b"".join(parts)

    def close(self) -> None:
        self.closed = True


def sent_ids(data: bytes | bytearray) -> list[tuple[str, list[str]]]:
    """The frames a gateway wrote to a child: each one's kind and the request ids of its rows."""
    frames = []
    while data:
        size = int.from_bytes(data[:4], "little")
        kind, body = marshal.loads(data[4:4 + size])
        frames.append((kind, [w[0] for w in body]))
        data = data[4 + size:]
    return frames


@pytest.mark.asyncio
async def test_a_child_as_asyncio_reports_its_pipes_and_its_exit(tmp_path: Path) -> None:
    """``_Child`` (private) driven as asyncio drives it, over a fake process: which lost pipe stops the sends
    (the window between a child closing its input and its exit is too short to hit from outside), and the
    transport closed once it has exited (nothing else shows it: it would leak the pipes)."""
    writer = WriterProcess(str(tmp_path / "h.db"))
    writer._loop = asyncio.get_running_loop()
    child = _Child(writer)
    process = FakeProcess()
    child.connection_made(process)  # type: ignore[arg-type]
    writer._child = child
    assert writer.stats()["pid"] == 4242
    child.pipe_connection_lost(1, None)  # its stdout: sends go on
    writer.put(rec(0))
    writer._send()
    assert (writer.stats()["queued"], sent_ids(process.written)) == (1, [("rows", ["req-0"])])
    child.pipe_connection_lost(0, None)  # its stdin: what is put now waits for the next child
    writer.put(rec(1))
    writer._send()
    assert (writer.stats()["queued"], sent_ids(process.written)) == (2, [("rows", ["req-0"])])
    process.returncode = -9
    child.process_exited()
    writer.put(rec(2))  # before its exit is settled: nothing is sent to it either
    writer._send()
    assert await asyncio.wait_for(child.exited, 30) == -9  # settled on the next turn of the loop
    assert process.closed
    stats = writer.stats()
    assert (stats["pid"], stats["dropped"], stats["queued"]) == (None, 1, 2)  # the one it held; those waiting
    await writer.close()


def test_wire_without_content_leaves_the_text_behind() -> None:
    w = wire(chat_rec(1), keep_content=False)
    payload, reply, chunks, body = w[-4:]
    assert payload == {"model": "m1", "temperature": 0.2, "max_tokens": 64, "stream": False}
    assert (reply, chunks, body) == (None, None, None)
    assert b"SECRET" not in marshal.dumps(w) and b"confidence" not in marshal.dumps(w)
    full = wire(chat_rec(1), keep_content=True)
    assert full[-4]["messages"] == CHAT["messages"] and full[-3] == REPLY


def test_metadata_rows_read_the_parameters_out_of_the_request_bytes() -> None:
    """In the gateway the record holds the request's bytes: the writer parses them, keeps the parameters."""
    r = chat_rec(1)
    r.body = orjson.dumps(CHAT)
    w = wire(r, keep_content=False)
    assert w[-4] is None and w[-1] is r.body  # a reference: nothing copied or filtered on the request path
    row = dict(zip(NAMES, row_from_wire(w, capture="metadata", client_ip=True), strict=True))
    assert (row["messages"], row["response"], row["prompt"], row["temperature"], row["max_tokens"]) == (
        None, None, None, 0.2, 64)
    assert row["parameters"] == '{"temperature":0.2,"max_tokens":64}'
    r.body = b"not json"
    broken = dict(zip(NAMES, row_from_wire(wire(r, keep_content=False), capture="metadata", client_ip=True),
                      strict=True))
    assert (broken["request_id"], broken["parameters"], broken["max_tokens"]) == ("req-1", None, None)


@pytest.mark.asyncio
async def test_capture_metadata_sends_no_content_to_the_child(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[bytes] = []
    send = _Child.send

    def spy(child: _Child, frame: tuple[Any, ...]) -> None:
        sent.append(marshal.dumps(frame))
        send(child, frame)

    monkeypatch.setattr(_Child, "send", spy)
    path = tmp_path / "h.db"
    async with running(WriterProcess(str(path), capture="metadata")) as writer:
        writer.put(chat_rec(1))
        await writer.flush()
    assert any(b"req-1" in frame for frame in sent)
    assert not any(b"SECRET" in frame or b"confidence" in frame for frame in sent)
    assert rows(path, "request_id, capture, messages, response, prompt, temperature, max_tokens, parameters") == [
        ("req-1", "metadata", None, None, None, 0.2, 64, '{"temperature":0.2,"max_tokens":64}')]


@pytest.mark.asyncio
async def test_capture_full_keeps_messages_and_response(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with running(WriterProcess(str(path), capture="full")) as writer:
        writer.put(chat_rec(1))
        await writer.flush()
    assert rows(path, "request_id, capture, messages, response, prompt, temperature") == [
        ("req-1", "full", orjson.dumps(CHAT["messages"]).decode(), "Paris, in confidence.",
         "what is the secret capital of france?", 0.2)]


@pytest.mark.asyncio
async def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with running(WriterProcess(str(path), queue_size=50, send_interval_s=0.001)) as writer:
        writer.put(rec(0))
        await writer.flush()  # the child is up, has written req-0 and reported it
        pid = writer.stats()["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_for(lambda: proc_state(pid) == "T")
            started = time.perf_counter()
            for n in range(1, 81):
                writer.put(rec(n))
                if n % 10 == 0:
                    await asyncio.sleep(0.005)  # let the sends go out to the stopped child's pipe
            assert time.perf_counter() - started < 0.5
            stats = writer.stats()
            assert (stats["queued"], stats["dropped"], stats["written"]) == (50, 30, 1)
        finally:
            os.kill(pid, signal.SIGCONT)
        await writer.flush()
        assert rows(path) == [(f"req-{n}",) for n in range(51)]
        stats = writer.stats()
        assert (stats["queued"], stats["dropped"], stats["written"], stats["pid"]) == (0, 30, 51, pid)
        writer.put(rec(99))  # room again
        await writer.flush()
        assert rows(path)[-1] == ("req-99",)


@pytest.mark.asyncio
async def test_a_killed_child_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.store.process._RESTART_BACKOFF_S", (0.05,))
    path = tmp_path / "h.db"
    with caplog.at_level(logging.ERROR):
        async with running(WriterProcess(str(path))) as writer:
            for n in range(20):
                writer.put(rec(n))
            await writer.flush()
            first = writer.stats()["pid"]
            os.kill(first, signal.SIGKILL)
            await wait_for(lambda: writer.stats()["restarts"] == 1)
            for n in range(20, 30):  # no child yet: kept until the new one starts
                writer.put(rec(n))
            await wait_for(lambda: writer.stats()["pid"] is not None)
            second = writer.stats()["pid"]
            assert second != first and not alive(first) and alive(second)
            for n in range(30, 40):
                writer.put(rec(n))
            await writer.flush()
            assert rows(path) == [(f"req-{n}",) for n in range(40)]
            stats = writer.stats()
            assert (stats["written"], stats["dropped"], stats["queued"], stats["restarts"]) == (40, 0, 0, 1)
    assert [r.getMessage() for r in caplog.records] == [  # and nothing from asyncio: no callback failed
        "history: the writer process exited (code -9) holding 0 record(s), counted as dropped (last error: none)"]
    assert not alive(second)
    assert (writer.stats()["written"], writer.stats()["dropped"]) == (40, 0)


@pytest.mark.asyncio
async def test_a_flush_while_closing_says_the_writer_is_closed(tmp_path: Path) -> None:
    writer = WriterProcess(str(tmp_path / "h.db"))
    async with running(writer):
        await writer.flush()
        pid = writer.stats()["pid"]
        os.kill(pid, signal.SIGSTOP)  # it cannot finish: the close below waits for it
        await wait_for(lambda: proc_state(pid) == "T")
        closing = asyncio.create_task(writer.close())
        await asyncio.sleep(0)  # the child's input is closed now
        with pytest.raises(HistoryUnavailableError, match=r"^the history writer is closed$"):
            await writer.flush()
        os.kill(pid, signal.SIGCONT)
        await closing


@pytest.mark.asyncio
async def test_records_held_by_a_killed_child_are_counted_as_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.store.process._RESTART_BACKOFF_S", (0.05,))
    path = tmp_path / "h.db"
    async with running(WriterProcess(str(path), send_interval_s=0.001)) as writer:
        writer.put(rec(0))
        await writer.flush()
        pid = writer.stats()["pid"]
        os.kill(pid, signal.SIGSTOP)
        await wait_for(lambda: proc_state(pid) == "T")
        for n in range(1, 6):
            writer.put(rec(n))
        await asyncio.sleep(0.05)  # sent: in the stopped child's pipe
        assert writer.stats()["queued"] == 5
        with caplog.at_level(logging.ERROR, logger="labgate.store"):
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: writer.stats()["restarts"] == 1)
        assert [r.getMessage() for r in caplog.records] == [
            "history: the writer process exited (code -9) holding 5 record(s), counted as dropped (last error: none)"]
        stats = writer.stats()
        assert (stats["written"], stats["dropped"], stats["queued"]) == (1, 5, 0)
        writer.put(rec(6))
        await writer.flush()
    assert rows(path) == [("req-0",), ("req-6",)]
    assert (writer.stats()["written"], writer.stats()["dropped"]) == (2, 5)


@pytest.mark.asyncio
async def test_killing_a_child_that_is_gone_does_nothing(tmp_path: Path) -> None:
    """``_Child.kill`` (private: ``close`` calls it when a child outlives its timeout, which may be the moment
    it exits) on a child that has exited and been reaped."""
    async with running(WriterProcess(str(tmp_path / "h.db"))) as writer:
        await writer.flush()
        child = writer._child
    assert child is not None and child.exited.done()
    child.kill()


@pytest.mark.asyncio
async def test_writer_cpus_pins_the_child(tmp_path: Path) -> None:
    if 0 not in os.sched_getaffinity(0):
        pytest.skip("CPU 0 is not available to this process")
    async with running(WriterProcess(str(tmp_path / "h.db"), cpus=[0])) as writer:
        await writer.flush()  # the child has set its affinity before reading anything
        assert cpus_allowed(writer.stats()["pid"]) == "0"


@pytest.mark.asyncio
async def test_flush_raises_when_the_store_cannot_be_opened(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "h.db"
    writer = WriterProcess(str(path))
    with caplog.at_level(logging.ERROR, logger="labgate.store"):
        async with running(writer, close_timeout=1.0):
            writer.put(rec(1))
            with pytest.raises(HistoryUnavailableError, match="history write failed: FileExistsError"):
                await writer.flush()
            stats = writer.stats()
            assert stats["last_error"].startswith("open: FileExistsError")
            assert (stats["ready"], stats["written"], stats["queued"]) == (False, 0, 1)
            started = time.monotonic()
    assert [r.getMessage() for r in caplog.records] == [
        "history: the writer process did not finish in 1 s; killing it",
        "history: 1 record(s) could not be written before shutdown and are lost"]
    # the child retries its final write until killed at the timeout; what it held is dropped
    assert time.monotonic() - started < 2.0
    assert (writer.stats()["written"], writer.stats()["dropped"], writer.stats()["queued"]) == (0, 1, 0)
    assert not path.exists()


@pytest.mark.asyncio
async def test_a_child_that_dies_is_logged_with_what_it_held_and_its_last_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.store.process._RESTART_BACKOFF_S", (3600.0,))  # no new child in this test
    (tmp_path / "file").write_text("not a directory")
    writer = WriterProcess(str(tmp_path / "file" / "h.db"))
    with caplog.at_level(logging.ERROR, logger="labgate.store"):
        async with running(writer):
            writer.put(rec(1))
            with pytest.raises(HistoryUnavailableError):
                await writer.flush()  # the child has reported its error, and holds the record
            error = writer.stats()["last_error"]
            os.kill(writer.stats()["pid"], signal.SIGKILL)
            await wait_for(lambda: writer.stats()["pid"] is None)
    assert error.startswith("open: FileExistsError: ")
    assert [r.getMessage() for r in caplog.records] == [
        f"history: the writer process exited (code -9) holding 1 record(s), counted as dropped (last error: {error})"]
    assert (writer.stats()["dropped"], writer.stats()["last_error"]) == (1, error)


@pytest.mark.asyncio
async def test_the_childs_log_lines_reach_the_gateways_stderr(tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "h.db"
    async with running(WriterProcess(str(path)), close_timeout=1.0) as writer:
        with pytest.raises(HistoryUnavailableError):
            await writer.flush()
    assert f"history: open failed on {path}: open: FileExistsError" in capfd.readouterr().err


@pytest.mark.asyncio
async def test_history_for_builds_the_configured_writer(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    assert history_for(StoreConfig(url=str(path), capture="none")) is None
    thread = history_for(StoreConfig(url=str(path), writer="thread"))
    assert isinstance(thread, HistoryWriter) and thread.writer == "thread"
    config = StoreConfig(url=str(path), capture="full", queue_size=123, writer_cpus=[0])
    assert config.writer == "process"  # the default
    writer = history_for(config)
    assert isinstance(writer, WriterProcess)
    assert (writer.capture, writer.keeps_content, writer.queue_size) == ("full", True, 123)
    async with running(writer):
        writer.put(chat_rec(1))
        await writer.flush()
        if 0 in os.sched_getaffinity(0):
            assert cpus_allowed(writer.stats()["pid"]) == "0"
    assert rows(path, "request_id, capture, response") == [("req-1", "full", "Paris, in confidence.")]


def test_a_writer_left_to_its_defaults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The defaults are StoreConfig's: what the child is told (the private ``_settings``; its log level is the
    ``labgate`` logger's), the gateway side's batch and send interval (private: only visible as time), and the
    stats of a writer not started yet."""
    path = str(tmp_path / "h.db")
    caplog.set_level(logging.DEBUG, logger="labgate")  # not the root logger's level
    writer = WriterProcess(path)
    assert orjson.loads(writer._settings) == {
        "url": path, "capture": "metadata", "queue_size": 20_000, "batch_size": 500, "flush_interval_s": 0.5,
        "client_ip": True, "retention_days": None, "cpus": None, "nice": 0, "log_level": logging.DEBUG}
    assert (writer.keeps_content, writer._batch, writer._send_interval) == (False, 500, 0.01)
    assert writer.stats() == {"store": path, "capture": "metadata", "writer": "process", "pid": None, "ready": False,
                              "queued": 0, "queue_size": 20_000, "written": 0, "dropped": 0, "rejected": 0,
                              "failed_writes": 0, "purged": 0, "last_error": None, "restarts": 0}


def test_from_config_passes_every_store_setting_on(tmp_path: Path) -> None:
    """Every ``store:`` key, none at its default: what the child is told (its argument, the private
    ``_settings``) and the gateway side's batch and send interval (private: only visible as time)."""
    path = str(tmp_path / "h.db")
    config = StoreConfig(url=path, capture="full", retention_days=7, queue_size=123, batch_size=45,
                         flush_interval_s=2.5, client_ip=False, writer_cpus=[0], writer_nice=3, send_interval_s=0.2)
    writer = WriterProcess.from_config(config, path)
    assert orjson.loads(writer._settings) == {
        "url": path, "capture": "full", "queue_size": 123, "batch_size": 45, "flush_interval_s": 2.5,
        "client_ip": False, "retention_days": 7.0, "cpus": [0], "nice": 3,
        "log_level": logging.getLogger("labgate").getEffectiveLevel()}
    assert (writer.capture, writer.keeps_content, writer.queue_size, writer._batch, writer._send_interval) == (
        "full", True, 123, 45, 0.2)


@pytest.mark.asyncio
async def test_a_record_with_a_huge_int_still_reaches_the_store(tmp_path: Path) -> None:
    """An int beyond 64 bits (which JSON libraries refuse) crosses to the writer; the row keeps the rest."""
    path = tmp_path / "h.db"
    async with running(WriterProcess(str(path), capture="metadata")) as writer:
        huge = rec(1)
        huge.payload = {"model": "m1", "seed": 2**70, "max_tokens": 8}
        writer.put(huge)
        writer.put(rec(2))
        await writer.flush()
    assert rows(path, "request_id, max_tokens") == [("req-1", 8), ("req-2", None)]


class ReaderStore:
    """A reader store whose ``open`` fails with each of ``failures`` in turn, then works."""

    display_url = "postgresql://db/history"

    def __init__(self, failures: list[Exception], *, close_error: Exception | None = None) -> None:
        self.failures = failures
        self.opened = False
        self.close_error = close_error

    async def open(self) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.opened = True

    async def aclose(self) -> None:
        if self.close_error is not None:
            raise self.close_error


@pytest.mark.asyncio
async def test_reopening_the_reader_logs_each_cause_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.store.process._RESTART_BACKOFF_S", (0.001,))
    writer = WriterProcess(str(tmp_path / "h.db"))
    down = ConnectionRefusedError("connection refused")
    writer.store = ReaderStore([down, down, down, OSError("no route to host"), down])  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="labgate.store"):
        await writer._open_reader_later()
    assert writer.store.opened and writer.stats()["ready"] is False  # no child: not ready, but reads work
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "history: still cannot open postgresql://db/history for reading (retrying): "
                    "ConnectionRefusedError: connection refused"),
        ("WARNING", "history: still cannot open postgresql://db/history for reading (retrying): "
                    "OSError: no route to host"),
        ("WARNING", "history: still cannot open postgresql://db/history for reading (retrying): "
                    "ConnectionRefusedError: connection refused"),
        ("INFO", "history: postgresql://db/history is open for reading")]


@pytest.mark.asyncio
async def test_reopening_the_reader_backs_off_to_the_last_delay(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The delays asked of ``asyncio.sleep`` are recorded (and not slept): the schedule, not a timing."""
    monkeypatch.setattr("labgate.store.process._RESTART_BACKOFF_S", (0.25, 0.5, 1.0))
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    writer = WriterProcess(str(tmp_path / "h.db"))
    writer.store = ReaderStore([ConnectionRefusedError("connection refused")] * 4)  # type: ignore[assignment]
    await writer._open_reader_later()
    assert writer.store.opened
    assert delays == [0.25, 0.5, 1.0, 1.0, 1.0]


@pytest.mark.asyncio
async def test_close_logs_a_failed_restart_and_a_failed_reader_close_once(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    writer = WriterProcess(str(tmp_path / "h.db"))
    writer.store = ReaderStore([], close_error=OSError("socket closed"))  # type: ignore[assignment]
    writer._loop = asyncio.get_running_loop()

    async def failing_spawn() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("bad settings")

    writer._spawning = asyncio.create_task(failing_spawn())
    with caplog.at_level(logging.ERROR, logger="labgate.store"):
        await writer.close(timeout=1.0)
    assert [(r.getMessage(), repr(r.exc_info[1]) if r.exc_info else None) for r in caplog.records] == [
        ("history: a writer process being started failed while closing", "ValueError('bad settings')"),
        ("history: closing the reader of postgresql://db/history failed", "OSError('socket closed')")]


# --- failure paths: a spawn that fails, a reader that opens late, an unsendable value, a child that dies in a flush


def failing_spawns(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make the next ``times`` spawns fail as an exhausted machine does (OSError); returns the attempt log."""
    real = WriterProcess._spawn
    attempts: list[int] = []

    async def spawn(self: WriterProcess) -> None:
        attempts.append(len(attempts))
        if len(attempts) <= times:
            raise OSError(11, "Resource temporarily unavailable")
        await real(self)

    monkeypatch.setattr(WriterProcess, "_spawn", spawn)
    monkeypatch.setattr("labgate.store.process._RESTART_BACKOFF_S", (0.01,))
    return attempts


@pytest.mark.asyncio
async def test_a_failed_spawn_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    attempts = failing_spawns(monkeypatch, times=2)
    path = tmp_path / "h.db"
    with caplog.at_level(logging.ERROR, logger="labgate.store"):
        async with running(WriterProcess(str(path))) as writer:
            writer.put(rec(1))  # held until a child is there
            await asyncio.wait_for(writer.flush(), 30)  # a bound on the retries (0.01 s apart), not a timing
            assert (len(attempts), writer.stats()["restarts"]) == (3, 2)
    assert rows(path) == [("req-1",)]
    assert [r.getMessage() for r in caplog.records] == [
        "history: cannot start the writer process: [Errno 11] Resource temporarily unavailable"] * 2


@pytest.mark.asyncio
async def test_restarts_back_off_to_the_last_delay_and_say_when(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    attempts = failing_spawns(monkeypatch, times=4)
    monkeypatch.setattr("labgate.store.process._RESTART_BACKOFF_S", (0.001, 0.002, 0.003))
    with caplog.at_level(logging.INFO, logger="labgate.store"):
        async with running(WriterProcess(str(tmp_path / "h.db"))) as writer:
            await asyncio.wait_for(writer.flush(), 30)  # a bound on the retries, not a timing
    assert len(attempts) == 5
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        f"history: starting a writer process in {delay} s" for delay in (0.001, 0.002, 0.003, 0.003)]


@pytest.mark.asyncio
async def test_records_still_held_at_close_without_a_child_are_counted_as_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_spawns(monkeypatch, times=10**6)  # no child ever starts
    writer = WriterProcess(str(tmp_path / "h.db"))
    async with running(writer, close_timeout=1.0):
        for n in range(3):
            writer.put(rec(n))
        assert (writer.stats()["queued"], writer.stats()["pid"]) == (3, None)
    stats = writer.stats()
    assert (stats["written"], stats["dropped"], stats["queued"]) == (0, 3, 0)


@pytest.mark.asyncio
async def test_a_reader_that_cannot_open_at_start_is_reopened_in_the_background(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.store.process._RESTART_BACKOFF_S", (0.01,))
    writer = WriterProcess(str(tmp_path / "h.db"))
    reader = ReaderStore([ConnectionRefusedError("connection refused")] * 3)
    writer.store = reader  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="labgate.store"):
        async with running(writer):
            await writer.flush()  # the child is up and ready; the reader is not, yet
            await wait_for(lambda: reader.opened, timeout=30)  # three retries 0.01 s apart
            assert writer.stats()["ready"] is True
    assert [r.getMessage() for r in caplog.records] == [
        "history: cannot open postgresql://db/history for reading yet: connection refused",
        "history: still cannot open postgresql://db/history for reading (retrying): "
        "ConnectionRefusedError: connection refused"]


class HangingReader(ReaderStore):
    async def open(self) -> None:
        await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_a_reader_that_hangs_at_start_does_not_hold_the_gateway(tmp_path: Path) -> None:
    writer = WriterProcess(str(tmp_path / "h.db"))
    writer.store = HangingReader([])  # type: ignore[assignment]
    await asyncio.wait_for(writer.start(open_timeout=0.05), 30)  # a hang guard: start gives up at 0.05 s
    try:
        await writer.flush()  # the child writes; reads wait for the reader, retried in the background
        assert writer.stats()["ready"] is False
    finally:
        await writer.close()


class Opaque:
    """A value no wire format carries (a client body never holds one; a bug or a plugin might)."""


@pytest.mark.asyncio
async def test_a_record_with_an_unsendable_value_keeps_its_row_without_its_bodies(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "h.db"
    with caplog.at_level(logging.WARNING, logger="labgate.store"):
        async with running(WriterProcess(str(path), capture="full", send_interval_s=10.0)) as writer:
            odd = chat_rec(1)
            odd.payload = {**CHAT, "metadata": {"x": Opaque()}}
            writer.put(chat_rec(0))
            writer.put(odd)  # in the same frame as req-0 (sent together by the flush)
            writer.put(chat_rec(2))
            await writer.flush()
    assert rows(path, "request_id, model, status, prompt_tokens, messages IS NOT NULL, response") == [
        ("req-0", "m1", 200, 0, 1, "Paris, in confidence."),
        ("req-1", "m1", 201, 1, 0, None),  # the row stays; only the contents are left out
        ("req-2", "m1", 200, 2, 1, "Paris, in confidence.")]
    assert [r.getMessage() for r in caplog.records] == [
        "history: request req-1 carries an object that cannot be recorded; its body is left out"]


@pytest.mark.asyncio
async def test_a_child_that_dies_during_a_flush_fails_the_flush(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labgate.store.process._RESTART_BACKOFF_S", (0.01,))
    async with running(WriterProcess(str(tmp_path / "h.db"))) as writer:
        await writer.flush()
        pid = writer.stats()["pid"]
        os.kill(pid, signal.SIGSTOP)
        await wait_for(lambda: proc_state(pid) == "T")
        writer.put(rec(1))
        flushing = asyncio.create_task(writer.flush())  # the stopped child cannot answer it
        await asyncio.sleep(0.05)
        assert not flushing.done()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(HistoryUnavailableError, match=r"^history write failed: the writer process exited "
                                                          r"\(code -9\)$"):
            await asyncio.wait_for(flushing, 30)  # a bound for a hang, not a timing
        await wait_for(lambda: writer.stats()["pid"] not in (None, pid), timeout=30)


# --- the writer process's own code, run in this process ----------------------------------------------
#
# The tests above start real children, which import the package afresh: code that only they run is out of
# reach of in-process tools (mutation testing, a debugger). These run the child's functions here, on real
# pipes and a real SQLite file, with the settings a WriterProcess sends, and read what the gateway would.


def child_settings(path: Path, **options: Any) -> dict[str, Any]:
    """The settings a gateway's WriterProcess gives its child (its private ``_settings``: nothing else shows them)."""
    return orjson.loads(WriterProcess(str(path), **options)._settings)


def frame(kind: str, body: Any) -> bytes:
    """One frame as the gateway writes it: a little-endian length, then the marshalled ``(kind, body)``."""
    data = marshal.dumps((kind, body))
    return len(data).to_bytes(4, "little") + data


def rows_frame(*numbers: int) -> bytes:
    return frame("rows", [wire(rec(n), keep_content=False) for n in numbers])


def report(path: Path, **changes: Any) -> dict[str, Any]:
    """The counters a child reports for an SQLite store at ``path`` (a line of its stdout, without extras)."""
    return {"store": str(path), "capture": "metadata", "writer": "thread", "ready": True, "queued": 0,
            "queue_size": 20_000, "written": 0, "dropped": 0, "rejected": 0, "failed_writes": 0, "purged": 0,
            "last_error": None, **changes}


def stdout_at(out: Path) -> BinaryIO:
    """The child's stdout: a file, which never blocks the loop as a full pipe would (the gateway reads it)."""
    return open(out, "wb")


def lines(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


async def serve(settings: dict[str, Any], frames: bytes, out: Path) -> list[dict[str, Any]]:
    """Run the child's loop on ``frames`` (then end of input, as at a clean stop); the lines it wrote."""
    read, write = os.pipe()
    os.write(write, frames)  # well below a pipe's 64 KiB
    os.close(write)
    with stdout_at(out) as stdout:
        await asyncio.wait_for(_serve(settings, os.fdopen(read, "rb", buffering=0), stdout), 30)  # a hang guard
    return lines(out)


@contextlib.asynccontextmanager
async def serving(settings: dict[str, Any], out: Path) -> AsyncIterator[Any]:
    """The child's loop with its input left open: yields a function that sends bytes; closes the input at the end."""
    read, write = os.pipe()
    with stdout_at(out) as stdout:
        task = asyncio.create_task(_serve(settings, os.fdopen(read, "rb", buffering=0), stdout))
        try:
            yield lambda data: os.write(write, data)
        finally:
            os.close(write)
            await asyncio.wait_for(task, 30)


async def reported(out: Path, condition: Any) -> dict[str, Any]:
    """Wait for a line of the child's output that meets ``condition`` (a hang guard, not a timing)."""
    deadline = time.monotonic() + 20
    while True:
        found = [line for line in lines(out) if condition(line)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no such report in {lines(out)}"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_the_child_writes_the_rows_it_is_sent_and_answers_each_flush(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    path, out = tmp_path / "h.db", tmp_path / "out"
    with caplog.at_level(logging.WARNING):
            said = await serve(child_settings(path, queue_size=100), rows_frame(0, 1, 2) + frame("flush", 7)
                           + rows_frame(3, 4), out)
    assert caplog.records == []  # nothing went wrong, not even in a callback
    assert rows(path, "request_id, status, client_ip, capture") == [
        (f"req-{n}", 200 + n % 2, "10.0.0.7", "metadata") for n in range(5)]
    assert {"report": report(path, queue_size=100, written=3), "flushed": 7} in said
    assert said[-1] == {"report": report(path, queue_size=100, written=5)}  # after the end of its input
    assert all(set(line) <= {"report", "flushed"} for line in said)


@pytest.mark.asyncio
async def test_the_child_keeps_the_capture_and_client_address_it_is_given(tmp_path: Path) -> None:
    path, out = tmp_path / "h.db", tmp_path / "out"
    sent = frame("rows", [wire(chat_rec(1), keep_content=True)])
    said = await serve(child_settings(path, capture="full", client_ip=False), sent, out)
    assert rows(path, "request_id, capture, client_ip, response") == [("req-1", "full", None, "Paris, in confidence.")]
    assert said[-1] == {"report": report(path, capture="full", written=1)}


@pytest.mark.asyncio
async def test_the_child_drops_and_counts_what_is_past_its_queue(tmp_path: Path) -> None:
    path, out = tmp_path / "h.db", tmp_path / "out"
    said = await serve(child_settings(path, queue_size=3), rows_frame(0, 1, 2, 3, 4), out)
    assert rows(path) == [("req-0",), ("req-1",), ("req-2",)]
    assert said[-1] == {"report": report(path, queue_size=3, written=3, dropped=2)}


@pytest.mark.asyncio
async def test_the_child_writes_a_full_batch_without_being_asked(tmp_path: Path) -> None:
    path, out = tmp_path / "h.db", tmp_path / "out"
    async with serving(child_settings(path, batch_size=2, flush_interval_s=3600.0), out) as send:
        send(frame("flush", 1))
        await reported(out, lambda line: "flushed" in line)  # the writer's first pass is over: it waits
        send(rows_frame(0, 1))
        assert await reported(out, lambda line: line["report"]["written"] == 2) == {
            "report": report(path, written=2)}


@pytest.mark.asyncio
async def test_the_child_writes_at_its_flush_interval_without_being_asked(tmp_path: Path) -> None:
    path, out = tmp_path / "h.db", tmp_path / "out"
    async with serving(child_settings(path, flush_interval_s=0.01), out) as send:
        send(frame("flush", 1))
        await reported(out, lambda line: "flushed" in line)  # the writer's first pass is over: it waits
        send(rows_frame(0))
        assert await reported(out, lambda line: line["report"]["written"] == 1) == {
            "report": report(path, written=1)}


@pytest.mark.asyncio
async def test_the_child_purges_rows_past_the_retention(tmp_path: Path) -> None:
    path, out = tmp_path / "h.db", tmp_path / "out"
    await serve(child_settings(path), rows_frame(0, 1), tmp_path / "first")  # timestamps of November 2023
    async with serving(child_settings(path, retention_days=1.0), out):
        assert await reported(out, lambda line: line["report"]["purged"] == 2) == {"report": report(path, purged=2)}
    assert rows(path) == []


@pytest.mark.asyncio
async def test_a_failed_flush_is_answered_with_its_error_and_the_rows_are_written_later(tmp_path: Path) -> None:
    (tmp_path / "d").write_text("not a directory yet")
    path, out = tmp_path / "d" / "h.db", tmp_path / "out"
    async with serving(child_settings(path), out) as send:
        send(rows_frame(0) + frame("flush", 3))
        answer = await reported(out, lambda line: "flushed" in line)
        (tmp_path / "d").unlink()
        (tmp_path / "d").mkdir()
    error = answer.pop("error")
    assert error.startswith("FileExistsError: ")
    assert answer == {"report": report(path, ready=False, queued=1, last_error=f"open: {error}"), "flushed": 3}
    assert rows(path) == [("req-0",)]  # written at the end of its input, once the store could open
    assert lines(out)[-1]["report"]["written"] == 1


@pytest.mark.asyncio
async def test_a_child_whose_gateway_is_gone_still_writes_what_arrived(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    read, write = os.pipe()
    os.write(write, rows_frame(0, 1) + frame("flush", 1) + rows_frame(2))
    os.close(write)
    gone, stdout = os.pipe()
    os.close(gone)  # nobody reads the reports: writing them fails (EPIPE)
    with os.fdopen(stdout, "wb", buffering=0) as out:
        await asyncio.wait_for(_serve(child_settings(path), os.fdopen(read, "rb", buffering=0), out), 30)
    assert rows(path) == [("req-0",), ("req-1",), ("req-2",)]


def test_reports_say_each_change_once_and_every_answer() -> None:
    """_Reports on a real (unstarted) writer: a line per change of its counters, a line per flush answer."""
    writer = HistoryWriter(store_for(":memory:"), capture="metadata", queue_size=5)
    out = io.BytesIO()
    reports = _Reports(writer, out)
    reports.send()
    reports.send()  # nothing changed
    writer.accept([wire(rec(0), keep_content=False)])
    reports.send()
    reports.send(flushed=4)  # an answer, even with nothing changed
    reports.send(flushed=5, error="OSError: disk full")
    stats = writer.stats()
    assert [orjson.loads(line) for line in out.getvalue().splitlines()] == [
        {"report": {**stats, "queued": 0}}, {"report": stats}, {"report": stats, "flushed": 4},
        {"report": stats, "flushed": 5, "error": "OSError: disk full"}]
    assert stats["queued"] == 1


def test_reports_stop_once_the_gateway_is_gone() -> None:
    class Gone(io.BytesIO):
        def write(self, data: Any) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    writer = HistoryWriter(store_for(":memory:"))
    reports = _Reports(writer, Gone())
    reports.send()  # no exception: the writer keeps writing
    assert reports.out is None
    reports.send(flushed=1)


class Calls(list[tuple[str, tuple[Any, ...]]]):
    """The process-wide calls ``main`` makes (``os.sched_setaffinity``, ``os.nice``), recorded instead of made:
    applied to the test process they would outlast the test. ``refuse`` makes one raise as the kernel may."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.refusals: dict[str, OSError | ValueError] = {}
        for name in ("sched_setaffinity", "nice"):
            monkeypatch.setattr(os, name, self.recorder(name))

    def recorder(self, name: str) -> Any:
        def call(*args: Any) -> None:
            self.append((name, args))
            if name in self.refusals:
                raise self.refusals[name]

        return call


@contextlib.contextmanager
def as_a_writer_process(monkeypatch: pytest.MonkeyPatch, frames: bytes, out: Path) -> Iterator[Calls]:
    """This process dressed as a writer process for ``main``: fd 0 a pipe holding ``frames`` (then its end),
    ``sys.stdout`` (and fd 1) a file. What ``main`` changes in the process (signal dispositions, the ``labgate``
    logger) is put back after; its affinity and nice calls are recorded (:class:`Calls`)."""
    read, write = os.pipe()
    os.write(write, frames)
    os.close(write)
    stdin = os.dup(0)
    os.dup2(read, 0)
    os.close(read)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    logger = logging.getLogger("labgate")
    handlers_before, level, propagate = logger.handlers[:], logger.level, logger.propagate
    calls = Calls(monkeypatch)
    stdout = open(out, "wb")  # noqa: SIM115 (closed with the wrapper below)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(stdout))
    fd1 = os.dup(1)
    os.dup2(stdout.fileno(), 1)  # the same file at the descriptor level, as in a child
    try:
        yield calls
    finally:
        os.dup2(stdin, 0)
        os.close(stdin)
        os.dup2(fd1, 1)
        os.close(fd1)
        for number, handler in handlers.items():
            signal.signal(number, handler)
        logger.handlers[:] = handlers_before
        logger.setLevel(level)
        logger.propagate = propagate
        stdout.close()


def test_main_runs_the_writer_on_its_stdin_and_stdout_and_stands_aside(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path, out = tmp_path / "h.db", tmp_path / "out"
    settings = {**child_settings(path, cpus=[1, 3], nice=5), "log_level": logging.WARNING}
    with as_a_writer_process(monkeypatch, rows_frame(0) + frame("flush", 2) + rows_frame(1), out) as calls:
        main([orjson.dumps(settings).decode()])
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (signal.SIG_IGN,
                                                                                      signal.SIG_IGN)
        assert calls == [("sched_setaffinity", (0, [1, 3])), ("nice", (5,))]
        labgate = logging.getLogger("labgate")
        assert (labgate.level, labgate.propagate, len(labgate.handlers)) == (logging.WARNING, False, 1)
    assert rows(path) == [("req-0",), ("req-1",)]
    said = lines(out)
    assert {"report": report(path, written=1), "flushed": 2} in said
    assert said[-1] == {"report": report(path, written=2)}


def test_main_without_uvloop_or_options_reads_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, out = tmp_path / "h.db", tmp_path / "out"
    settings = child_settings(path)
    del settings["log_level"]  # from an older gateway: info
    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed: asyncio's loop
    monkeypatch.setattr(sys, "argv", ["labgate.store.process", orjson.dumps(settings).decode()])
    with as_a_writer_process(monkeypatch, rows_frame(0), out) as calls:
        main()
        assert (calls, logging.getLogger("labgate").level) == ([], logging.INFO)
    assert rows(path) == [("req-0",)]
    assert lines(out)[-1] == {"report": report(path, written=1)}


@pytest.mark.parametrize("refusal", [OSError(22, "Invalid argument"), ValueError("negative CPU number")],
                         ids=["os-error", "value-error"])
def test_main_goes_on_when_it_cannot_pin_or_lower_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         refusal: OSError | ValueError) -> None:
    path, out = tmp_path / "h.db", tmp_path / "out"
    with as_a_writer_process(monkeypatch, rows_frame(0), out) as calls:
        calls.refusals.update(sched_setaffinity=refusal, nice=PermissionError(1, "Operation not permitted"))
        main([orjson.dumps(child_settings(path, cpus=[4096], nice=5)).decode()])
        assert calls == [("sched_setaffinity", (0, [4096])), ("nice", (5,))]
    assert rows(path) == [("req-0",)]
