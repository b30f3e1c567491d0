"""The history writer in its own process: the request path only gathers references and sends batches.

Writing history costs CPU: turning a record into a row (JSON of the
parameters and messages, the answer pulled out of the reply) and the
database's own work (SQLite's B-trees, or asyncpg's encoding). In the
serving process that work shares the event loop's core and its GIL; here it
runs in a child process that the OS schedules on another core::

    gateway process                                   writer process (python -m labgate.store.process)
    Gateway.finish ─▶ WriterProcess.put               HistoryWriter.accept ─▶ rows ─▶ Store.write
      wire(record): a tuple of references (~0.5 µs)      (the same writer, queue and retries as
      every 10 ms: marshal.dumps(batch) ─▶ stdin ───────▶  store.writer: thread, in this process)
                  ◀── stdout: one JSON line of counters per change, and each flush's answer

Bounded as the thread writer is: records sent but not yet written (per the
child's last report), plus those waiting for the next send, never exceed
``store.queue_size``; past it a record is dropped and counted. A clean stop
sends what is left and closes the child's stdin: the child writes
everything and exits. If the gateway is killed, the child still sees its
stdin close and writes what it received: a crash loses at most the last
send interval (10 ms). If the child dies, what it had not written is
counted as dropped and a new one is started (with backoff).

The child ignores SIGINT and SIGTERM (a terminal's Ctrl-C and systemd's stop
reach the whole process group): it stops when the gateway closes its stdin,
after the gateway has finished its requests, so the last records are kept.

Reads (the admin API) use a store opened in the gateway process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import marshal
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import orjson

from labgate.errors import HistoryUnavailableError
from labgate.record import RequestRecord
from labgate.store import store_for
from labgate.store.capture import Wire, wire, without_bodies
from labgate.store.writer import DropWarning, HistoryWriter, prometheus_text

if TYPE_CHECKING:
    from labgate.config.schema.store import Capture, StoreConfig

log = logging.getLogger("labgate.store")

SEND_INTERVAL_S = 0.01
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_COUNTERS = ("written", "dropped", "rejected", "failed_writes", "purged")
_LEN = 4  # bytes of the little-endian length before each frame


class WriterProcess:
    """The gateway side: takes records on the request path and feeds the writer process."""

    writer = "process"

    def __init__(self, url: str, *, capture: Capture = "metadata", queue_size: int = 20_000,
                 batch_size: int = 500, flush_interval_s: float = 0.5, client_ip: bool = True,
                 retention_days: float | None = None, cpus: list[int] | None = None, nice: int = 0,
                 send_interval_s: float = SEND_INTERVAL_S) -> None:
        self.store = store_for(url)  # for reading; the child opens its own for writing
        self.capture = capture
        self.keeps_content = capture == "full"
        self.queue_size = queue_size
        self._batch = batch_size
        self._send_interval = send_interval_s
        self._settings = orjson.dumps({
            "url": url, "capture": capture, "queue_size": queue_size, "batch_size": batch_size,
            "flush_interval_s": flush_interval_s, "client_ip": client_ip, "retention_days": retention_days,
            "cpus": cpus, "nice": nice, "log_level": logging.getLogger("labgate").getEffectiveLevel()}).decode()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer: list[Wire] = []
        self._child: _Child | None = None
        self._past: dict[str, int] = dict.fromkeys(_COUNTERS, 0)  # totals of children that have exited
        self._sent = 0  # to the current child
        self._in_flight = 0  # sent to it and not yet settled (written, dropped or rejected) by its last report
        self._dropped = 0  # here: the queue was full, or a child died holding records
        self._seq = itertools.count(1)
        self._restarts = 0
        self._respawn: asyncio.TimerHandle | None = None  # a restart waiting out its backoff
        self._spawning: asyncio.Task[None] | None = None  # … then starting
        self._reopen: asyncio.Task[None] | None = None  # the reader store, when it could not open at start
        self._last_report: dict[str, Any] = {}  # of the last child that exited
        self._closing = False
        self._reader_ready = False
        self._drop_warning = DropWarning(queue_size)

    @classmethod
    def from_config(cls, config: StoreConfig, url: str) -> WriterProcess:
        return cls(url, capture=config.capture, queue_size=config.queue_size, batch_size=config.batch_size,
                   flush_interval_s=config.flush_interval_s, client_ip=config.client_ip,
                   retention_days=config.retention_days, cpus=config.writer_cpus, nice=config.writer_nice,
                   send_interval_s=config.send_interval_s)

    # --- the request path ----------------------------------------------------

    def put(self, record: RequestRecord) -> None:
        """Queue a finished record; never blocks. Full queue: drop it and count."""
        buffer = self._buffer
        if self._in_flight + len(buffer) >= self.queue_size:
            self._drop(1)
            return
        buffer.append(wire(record, keep_content=self.keeps_content))
        if len(buffer) == 1 and self._loop is not None:
            self._loop.call_later(self._send_interval, self._send)
        elif len(buffer) >= self._batch:
            self._send()

    def _reported(self, report: dict[str, Any]) -> None:
        self._in_flight = self._sent - report["written"] - report["dropped"] - report["rejected"]

    def _send(self) -> None:
        child, batch = self._child, self._buffer
        if not batch or child is None or child.stdin is None:
            return  # kept (bounded by put) until a child is there
        self._buffer = []
        child.send(("rows", batch))
        self._sent += len(batch)
        self._in_flight += len(batch)

    def _drop(self, count: int) -> None:
        """The queue is full: drop and count, with a warning at most every 10 s."""
        self._dropped += count
        self._drop_warning.add(count, self._drop_totals)

    def _drop_totals(self) -> tuple[int, str | None]:
        stats = self.stats()
        return stats["dropped"], stats["last_error"]

    # --- lifecycle -----------------------------------------------------------

    async def start(self, *, open_timeout: float = 10.0) -> None:
        """Start the writer process and open the store for reading; the gateway serves meanwhile."""
        self._loop = asyncio.get_running_loop()
        await self._spawn_or_retry()
        try:
            await asyncio.wait_for(self._open_reader(), open_timeout)
        except Exception as exc:  # PostgreSQL down: reads answer 503 until it is back
            log.warning("history: cannot open %s for reading yet: %s", self.store.display_url, exc)
            self._reopen = self._loop.create_task(self._open_reader_later())

    async def _open_reader(self) -> None:
        await self.store.open()
        self._reader_ready = True

    async def _open_reader_later(self) -> None:
        """Retry opening the reader with backoff; each new cause is logged once, not every retry."""
        said = ""
        for attempt in itertools.count():
            await asyncio.sleep(_RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)])
            if self._closing:
                return
            try:
                await self._open_reader()
            except Exception as exc:
                cause = f"{type(exc).__name__}: {exc}"
                if cause != said:
                    log.warning("history: still cannot open %s for reading (retrying): %s",
                                self.store.display_url, cause)
                    said = cause
                continue
            log.info("history: %s is open for reading", self.store.display_url)
            return

    async def _spawn_or_retry(self) -> None:
        self._respawn = None
        try:
            await self._spawn()
        except (OSError, RuntimeError) as exc:  # out of processes or file handles: try again later
            log.error("history: cannot start the writer process: %s", exc)
            self._restart_later()

    async def _spawn(self) -> None:
        assert self._loop is not None
        child = _Child(self)
        await self._loop.subprocess_exec(lambda: child, sys.executable, "-m", "labgate.store.process",
                                         self._settings, stdin=asyncio.subprocess.PIPE,
                                         stdout=asyncio.subprocess.PIPE, stderr=None)
        self._child, self._sent, self._in_flight = child, 0, 0
        self._send()

    def _restart_later(self) -> None:
        if self._closing:
            return
        assert self._loop is not None
        delay = _RESTART_BACKOFF_S[min(self._restarts, len(_RESTART_BACKOFF_S) - 1)]
        self._restarts += 1
        self._respawn = self._loop.call_later(delay, self._start_spawning)
        log.info("history: starting a writer process in %g s", delay)

    def _start_spawning(self) -> None:
        assert self._loop is not None
        self._spawning = self._loop.create_task(self._spawn_or_retry())

    def _exited(self, child: _Child, code: int | None) -> None:
        """The child is gone: keep its totals; count what it held as dropped; start another (not when closing)."""
        if child is not self._child:
            return
        report = self._last_report = child.report
        lost = self._in_flight  # per its last report, read before this
        for name in _COUNTERS:
            self._past[name] += report[name]
        self._child, self._sent, self._in_flight = None, 0, 0
        self._dropped += lost
        if self._closing:
            if lost:
                log.error("history: %d record(s) could not be written before shutdown and are lost", lost)
            return
        log.error("history: the writer process exited (code %s) holding %d record(s), counted as dropped "
                  "(last error: %s)", code, lost, report.get("last_error") or "none")
        self._restart_later()

    async def flush(self) -> None:
        """Write everything put so far (tests, admin); raises if the store fails."""
        while self._child is None or self._child.stdin is None:
            if self._closing:
                raise HistoryUnavailableError("the history writer is closed")
            await asyncio.sleep(0.05)
        self._send()
        error = await self._child.flush(next(self._seq))
        if error is not None:
            raise HistoryUnavailableError(f"history write failed: {error}")

    async def close(self, timeout: float = 15.0) -> None:
        """Send what is left, let the child write it and exit (up to ``timeout`` s), close the reader."""
        self._closing = True
        if self._respawn is not None:
            self._respawn.cancel()
        if self._reopen is not None:
            self._reopen.cancel()
        if self._spawning is not None and not self._spawning.done():
            try:
                await self._spawning  # a restart under way: its child gets the stop below like any other
            except Exception:
                log.exception("history: a writer process being started failed while closing")
        child = self._child
        if child is not None:
            self._send()
            child.close_stdin()
            try:
                await asyncio.wait_for(asyncio.shield(child.exited), timeout)
            except TimeoutError:
                log.error("history: the writer process did not finish in %g s; killing it", timeout)
                child.kill()
                await child.exited
        if self._buffer:
            self._drop(len(self._buffer))
            self._buffer = []
        try:
            await self.store.aclose()
        except Exception:
            log.exception("history: closing the reader of %s failed", self.store.display_url)

    def stats(self) -> dict[str, Any]:
        child = self._child
        report = child.report if child is not None else {}  # an exited child's counts are in _past
        totals = {name: self._past[name] + report.get(name, 0) for name in _COUNTERS}
        totals["dropped"] += self._dropped
        if child is None:
            report = self._last_report  # for its last error
        return {"store": self.store.display_url, "capture": self.capture, "writer": self.writer,
                "pid": child.pid if child is not None else None,
                "ready": child is not None and bool(report.get("ready")) and self._reader_ready,
                "queued": self._in_flight + len(self._buffer), "queue_size": self.queue_size, **totals,
                "last_error": report.get("last_error"), "restarts": self._restarts}

    def prometheus(self) -> str:
        return prometheus_text(self.stats())


class _Child(asyncio.SubprocessProtocol):
    """One writer process: its pipes, its last report, the flushes waiting for it."""

    def __init__(self, owner: WriterProcess) -> None:
        self.owner = owner
        self.report: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
        self.transport: asyncio.SubprocessTransport | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.pid: int | None = None
        self._partial = b""
        self._flushes: dict[int, asyncio.Future[str | None]] = {}
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a subprocess transport, though uvloop's does not subclass asyncio.SubprocessTransport
        process = cast(asyncio.SubprocessTransport, transport)
        self.transport = process
        self.pid = process.get_pid()
        self.stdin = cast(asyncio.WriteTransport | None, process.get_pipe_transport(0))

    def send(self, frame: tuple[Any, ...]) -> None:
        """One frame: its length, then its body (marshal: builtins and bytes, in one C call)."""
        assert self.stdin is not None
        try:
            data = marshal.dumps(frame)
        except ValueError:  # something unmarshallable in a payload: send those records without it
            data = marshal.dumps((frame[0], [_marshallable(w) for w in frame[1]]))
        self.stdin.writelines((len(data).to_bytes(_LEN, "little"), data))

    async def flush(self, seq: int) -> str | None:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._flushes[seq] = future
        self.send(("flush", seq))
        return await future

    def close_stdin(self) -> None:
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None

    def kill(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("history: unreadable line from the writer process: %r", line[:200])
                continue
            self.report = message["report"]
            if self.owner._child is self:
                self.owner._reported(self.report)
            seq = message.get("flushed")
            if seq is not None:
                future = self._flushes.pop(seq, None)
                if future is not None and not future.done():
                    future.set_result(message.get("error"))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 0:
            self.stdin = None

    def process_exited(self) -> None:
        assert self.transport is not None
        code = self.transport.get_returncode()
        self.stdin = None
        for future in self._flushes.values():
            if not future.done():
                future.set_result(f"the writer process exited (code {code})")
        self._flushes.clear()
        # the last report may still be in the stdout pipe: read it before settling the counts
        asyncio.get_running_loop().call_soon(self._settle, code)

    def _settle(self, code: int | None) -> None:
        self.owner._exited(self, code)
        if not self.exited.done():
            self.exited.set_result(code)
        if self.transport is not None:
            self.transport.close()


def _marshallable(w: Wire) -> Wire:
    try:
        marshal.dumps(w)
        return w
    except ValueError:
        log.warning("history: request %s carries an object that cannot be recorded; its body is left out", w[0])
        return without_bodies(w)


# --- the writer process ----------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``python -m labgate.store.process SETTINGS_JSON``: read frames on stdin, write history, report on stdout."""
    settings = orjson.loads((argv if argv is not None else sys.argv[1:])[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway says when to stop: by closing our stdin
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if settings.get("cpus"):
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, settings["cpus"])
    if settings.get("nice"):  # below the gateway: under a full CPU, requests are served first
        with contextlib.suppress(OSError):
            os.nice(settings["nice"])
    from labgate.telemetry.logs import configure_logging

    configure_logging(logging.getLevelName(settings.get("log_level", logging.INFO)).lower())
    stdin, stdout = os.fdopen(0, "rb", buffering=0), sys.stdout.buffer
    try:
        import uvloop

        uvloop.run(_serve(settings, stdin, stdout))
    except ImportError:
        asyncio.run(_serve(settings, stdin, stdout))


async def _serve(settings: dict[str, Any], stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Write the records the gateway sends on ``stdin`` (frames) until it closes; report on ``stdout``."""
    writer = HistoryWriter(store_for(settings["url"]), capture=settings["capture"],
                           queue_size=settings["queue_size"], batch_size=settings["batch_size"],
                           flush_interval_s=settings["flush_interval_s"], client_ip=settings["client_ip"],
                           retention_days=settings["retention_days"])
    reports = _Reports(writer, stdout)
    writer.on_change = reports.send
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    # read at once, while the store opens: what the gateway sends must not wait in its memory (a crash loses that)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    started = loop.create_task(writer.start())
    started.add_done_callback(lambda _: reports.send())
    while True:
        try:
            size = int.from_bytes(await reader.readexactly(_LEN), "little")
            kind, body = marshal.loads(await reader.readexactly(size))
        except asyncio.IncompleteReadError:
            break  # the gateway closed our stdin (a clean stop) or died: write what we have, then exit
        if kind == "rows":
            writer.accept(body)
        elif kind == "flush":
            await started
            try:
                await writer.flush()
            except Exception as exc:
                reports.send(flushed=body, error=f"{type(exc).__name__}: {exc}")
            else:
                reports.send(flushed=body)
    await started
    await writer.close()
    reports.send()


class _Reports:
    """The writer's counters, one JSON line on stdout each time they change; silent once the gateway is gone."""

    def __init__(self, writer: HistoryWriter, out: BinaryIO) -> None:
        self.writer = writer
        self.last: dict[str, Any] = {}
        self.out: BinaryIO | None = out

    def send(self, **extra: Any) -> None:
        now = self.writer.stats()
        if self.out is None or (now == self.last and not extra):
            return
        self.last = now
        try:
            self.out.write(orjson.dumps({"report": now, **extra}) + b"\n")
            self.out.flush()
        except OSError:  # the gateway died: keep writing what arrived, stop reporting
            self.out = None


if __name__ == "__main__":
    main()
