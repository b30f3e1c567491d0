"""The history writer: a bounded queue on the request path, batched writes behind it.

The request path calls :meth:`HistoryWriter.put` once per request: a length
check and a list append (no copy, no serialisation). When the queue is full
the record is dropped and counted (``labgate_history_dropped_total``), with
a warning at most every 10 s; the gateway keeps serving.

The records put during one turn of the event loop become rows
(``capture.py``) in one callback on the next turn: after the responses have
been handed to their sockets, while the requests' objects are still warm in
the CPU cache (a batch later they would be read back from cold memory), and
the records are freed at once.
A background task wakes when a batch of rows is ready or every
``flush_interval_s`` and writes each batch in one transaction. A
failed write is retried with backoff (the queue absorbs the meantime); a
batch that keeps failing is retried row by row so that one bad row cannot
block the rest (rows rejected then are counted and logged).
Retention is a periodic purge of rows older than ``retention_days``.

The writer lives as long as the process, not a Runtime: a config reload
keeps the queue. :meth:`close` (clean shutdown) writes everything queued.
A crash loses what was queued: at most ~``flush_interval_s`` of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from labgate.record import RequestRecord
from labgate.store import resolve_url, store_for
from labgate.store.base import Row, Store
from labgate.store.capture import Wire, build_row, row_from_wire
from labgate.store.schema import TABLE

if TYPE_CHECKING:
    from labgate.config.schema.store import Capture, StoreConfig

log = logging.getLogger("labgate.store")

_WARN_EVERY_S = 10.0
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_ROW_BY_ROW_AFTER = 3  # failed attempts at one batch before trying its rows one by one
_PURGE_CHUNK = 5000


class History(Protocol):
    """What the gateway holds: :class:`HistoryWriter` (in process) or ``process.WriterProcess``."""

    capture: Capture
    keeps_content: bool
    store: Store  # for reading (the admin API)

    def put(self, record: RequestRecord) -> None: ...
    async def start(self, *, open_timeout: float = 10.0) -> None: ...
    async def flush(self) -> None: ...
    async def close(self, timeout: float = 15.0) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def prometheus(self) -> str: ...


def history_for(config: StoreConfig, *, source: str | None = None) -> History | None:
    """The history ``store:`` asks for: None for ``capture: none``; else a writer process, or a thread."""
    if config.capture == "none":
        return None
    if config.writer == "process":
        from labgate.store.process import WriterProcess

        return WriterProcess.from_config(config, resolve_url(config.url, source=source))
    return HistoryWriter.from_config(config, source=source)


class DropWarning:
    """Records dropped because the queue was full: a warning at most every 10 s, with how many since the last."""

    __slots__ = ("_next", "_since", "queue_size")

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._since = 0
        self._next = 0.0

    def add(self, count: int, totals: Callable[[], tuple[int, str | None]]) -> None:
        """``totals``: the dropped count in all and the last write error, asked for only when it warns."""
        self._since += count
        now = time.monotonic()
        if now >= self._next:
            total, last_error = totals()
            log.warning("history queue full (%d records): dropped %d record(s) since the last warning, "
                        "%d in total; the store is not keeping up (%s)", self.queue_size, self._since, total,
                        last_error or "no write error")
            self._since = 0
            self._next = now + _WARN_EVERY_S


def prometheus_text(stats: dict[str, Any]) -> str:
    """A writer's counters (``stats()``) in the Prometheus text format."""
    lines = []
    for name, kind, key, help_text in (
            ("labgate_history_written_total", "counter", "written", "History records written."),
            ("labgate_history_dropped_total", "counter", "dropped",
             "History records dropped because the queue was full."),
            ("labgate_history_rejected_total", "counter", "rejected", "History records the store refused."),
            ("labgate_history_write_failures_total", "counter", "failed_writes", "Failed batch writes."),
            ("labgate_history_queued", "gauge", "queued", "History records waiting to be written.")):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {stats[key]}"]
    return "\n".join(lines) + "\n"


class HistoryWriter:
    """Takes finished records on the request path; writes them to a :class:`Store` in batches."""

    writer = "thread"

    def __init__(self, store: Store, *, capture: Capture = "full", queue_size: int = 20_000,
                 batch_size: int = 500, flush_interval_s: float = 0.5, client_ip: bool = True,
                 retention_days: float | None = None, purge_every_s: float = 3600.0) -> None:
        self.store = store
        self.capture = capture
        self.keeps_content = capture == "full"
        self.queue_size = queue_size
        self._queue: deque[Row] = deque()
        self._batch = batch_size
        self._interval = flush_interval_s
        self._client_ip = client_ip
        self._retention_s = retention_days * 86400.0 if retention_days else None
        self._purge_every = purge_every_s
        self._pending: list[Row] = []  # converted, not yet written (a batch being retried)
        self._pending_failures = 0
        self._draining = asyncio.Lock()  # the task and flush() never write the same batch twice
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fresh: list[RequestRecord] = []  # put during this turn of the loop; rows on the next
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = False
        self._drop_warning = DropWarning(queue_size)
        self.dropped = 0
        self.written = 0
        self.rejected = 0
        self.failed_writes = 0
        self.purged = 0
        self.last_error: str | None = None
        self.on_change: Callable[[], None] | None = None  # after each write or drop (the writer process reports)

    @classmethod
    def from_config(cls, config: StoreConfig, *, source: str | None = None) -> HistoryWriter | None:
        """The writer ``store:`` asks for, or None for ``capture: none``."""
        if config.capture == "none":
            return None
        return cls(store_for(resolve_url(config.url, source=source)), capture=config.capture,
                   queue_size=config.queue_size, batch_size=config.batch_size,
                   flush_interval_s=config.flush_interval_s, client_ip=config.client_ip,
                   retention_days=config.retention_days)

    # --- the request path ----------------------------------------------------

    def put(self, record: RequestRecord) -> None:
        """Queue a finished record; never blocks. Full queue: drop it and count."""
        fresh = self._fresh
        if len(self._queue) + len(fresh) >= self.queue_size:
            self._drop()
            return
        fresh.append(record)
        if len(fresh) == 1:  # the first of this turn of the loop: convert them all on the next turn
            if self._loop is None:  # not started (tests): now
                self._convert()
            else:
                self._loop.call_soon(self._convert)

    def _convert(self) -> None:
        fresh, self._fresh = self._fresh, []
        queue, capture, client_ip = self._queue, self.capture, self._client_ip
        before = len(queue)
        for record in fresh:
            queue.append(build_row(record, capture=capture, client_ip=client_ip))
        if before < self._batch <= len(queue) and self._wake is not None:
            self._wake.set()

    def accept(self, wires: list[Wire]) -> None:
        """Queue records that arrive in their wire form (in the writer process); past the bound, drop."""
        queue, capture, client_ip = self._queue, self.capture, self._client_ip
        before = len(queue)
        room = max(0, self.queue_size - before - len(self._pending))
        for w in wires[:room]:
            queue.append(row_from_wire(w, capture=capture, client_ip=client_ip))
        if len(wires) > room:
            self._drop(len(wires) - room)
            self._changed()
        if before < self._batch <= len(queue) and self._wake is not None:
            self._wake.set()

    def _drop(self, count: int = 1) -> None:
        self.dropped += count
        self._drop_warning.add(count, lambda: (self.dropped, self.last_error))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- lifecycle -----------------------------------------------------------

    async def start(self, *, open_timeout: float = 10.0) -> None:
        """Open the store and start the background task.

        A store that cannot be opened now (PostgreSQL down) is logged and
        retried in the background; the gateway serves meanwhile and records
        queue up to ``queue_size``.
        """
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._open(), open_timeout)
        except Exception as exc:  # logged and retried by the loop
            self._failed("open", exc)
        self._task = asyncio.create_task(self._run(), name="labgate-history-writer")

    async def flush(self) -> None:
        """Write everything queued so far (tests, admin); raises if the store fails."""
        if not self._ready:
            await self._open()
        await self._drain()

    async def close(self, timeout: float = 15.0) -> None:
        """Stop the task, write everything still queued (up to ``timeout`` s), close the store."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            # it finishes its current batch (cancelling a write could write it twice), unless it hangs
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        attempt = 0
        while self._queue or self._pending:
            try:  # a store that hangs (not fails) is cut at the deadline too
                await asyncio.wait_for(self.flush(), max(deadline - time.monotonic(), 0.0))
            except Exception as exc:
                self._failed("final flush", exc)
                wait = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                attempt += 1
                if time.monotonic() + wait > deadline:
                    lost = len(self._queue) + len(self._pending)
                    log.error("history: %d record(s) could not be written before shutdown and are lost", lost)
                    break
                await asyncio.sleep(wait)
        try:
            await self.store.aclose()
        except Exception:
            log.exception("history: closing %s failed", self.store.display_url)

    def stats(self) -> dict[str, Any]:
        return {"store": self.store.display_url, "capture": self.capture, "writer": self.writer,
                "ready": self._ready, "queued": len(self._queue) + len(self._pending) + len(self._fresh),
                "queue_size": self.queue_size, "written": self.written, "dropped": self.dropped,
                "rejected": self.rejected, "failed_writes": self.failed_writes, "purged": self.purged,
                "last_error": self.last_error}

    def prometheus(self) -> str:
        """The writer's counters in the Prometheus text format."""
        return prometheus_text(self.stats())

    # --- the background task ---------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        next_purge = time.monotonic()
        while not self._stopping:
            try:
                if not self._ready:
                    await self._open()
                await self._drain()
                if self._retention_s is not None and time.monotonic() >= next_purge:
                    await self.purge()
                    next_purge = time.monotonic() + self._purge_every
                failures = 0
            except Exception as exc:
                self._failed("write" if self._ready else "open", exc)
                failures += 1
            self._changed()
            if self._stopping:
                break
            await self._sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S)) - 1] if failures else None)

    async def _sleep(self, backoff: float | None) -> None:
        assert self._wake is not None
        self._wake.clear()
        if backoff is None and len(self._queue) >= self._batch:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(backoff or self._interval):
                if backoff is None:
                    await self._wake.wait()
                else:  # after a failure only shutdown cuts the backoff short
                    while not self._stopping:
                        await self._wake.wait()
                        self._wake.clear()

    async def _open(self) -> None:
        await self.store.open()
        self._ready = True
        self.last_error = None  # the failure to open is over (readiness reads it: server/health.py)
        log.info("history: writing to %s (capture: %s)", self.store.display_url, self.capture)

    async def _drain(self) -> None:
        queue = self._queue
        async with self._draining:
            while self._pending or queue:
                if not self._pending:
                    pop = queue.popleft
                    self._pending = [pop() for _ in range(min(self._batch, len(queue)))]
                await self._write_pending()

    async def _write_pending(self) -> None:
        rows = self._pending
        try:
            await self.store.write(rows)
        except Exception:
            self._pending_failures += 1
            if self._pending_failures < _ROW_BY_ROW_AFTER:
                raise
            await self._write_one_by_one(rows)
        else:
            self.written += len(rows)
        self._pending = []
        self._pending_failures = 0
        self.last_error = None

    async def _write_one_by_one(self, rows: Sequence[Row]) -> None:
        """A batch that keeps failing: keep the rows the store accepts, count the ones it refuses."""
        refused: list[tuple[Row, Exception]] = []
        for row in rows:
            try:
                await self.store.write([row])
            except Exception as exc:
                refused.append((row, exc))
            else:
                self.written += 1
        if len(refused) == len(rows):
            raise refused[0][1]  # nothing goes in: the store is down, not the rows bad; keep them
        if not refused:  # the store came back: every row went in
            return
        self.rejected += len(refused)
        log.error("history: the store refused %d record(s), e.g. request %s: %s", len(refused),
                  refused[0][0][0], refused[0][1])

    async def purge(self) -> int:
        """Delete rows older than ``retention_days``; returns how many."""
        if self._retention_s is None:
            return 0
        cutoff = time.time() - self._retention_s
        sql = (f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} "
               f"WHERE timestamp < {self.store.dialect.time_param} LIMIT {_PURGE_CHUNK})")
        total = 0
        while True:
            deleted = await self.store.execute(sql, (cutoff,))
            total += deleted
            if deleted < _PURGE_CHUNK:
                break
            await asyncio.sleep(0)
        self.purged += total
        if total:
            log.info("history: purged %d record(s) older than %g days", total, self._retention_s / 86400)
        return total

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failed_writes += what != "open"
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        log.warning("history: %s failed on %s: %s", what, self.store.display_url, self.last_error)
