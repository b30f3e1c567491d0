"""The embedded history store: one SQLite file in WAL mode, written from its own thread.

Why the stdlib ``sqlite3`` on a dedicated thread rather than ``aiosqlite``:
aiosqlite is the same thing (a thread per connection) plus a future per
call and a dependency. Here one thread owns the writing connection (a batch
is one transaction, and SQLite releases the GIL while it works), a second
owns a reading connection (WAL lets it read while the writer writes), and
nothing else touches either.

A batch goes in as multi-row ``INSERT`` statements (100 rows each): the GIL
is released once per statement while SQLite works, not once per row, so the
writer thread hands the GIL back and forth with the event loop a hundred
times less often than ``executemany`` would.

Several processes (``serve --workers N``, the CLI) may open the same file:
WAL allows readers alongside one writer, and writers wait for each other up
to the busy timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from labgate.store.base import Dialect, Row
from labgate.store.schema import NAMES, SQLITE_MIGRATIONS, TABLE, VERSION_TABLE

T = TypeVar("T")

SQLITE = Dialect(
    name="sqlite",
    like="LIKE",  # case-insensitive for ASCII
    time_param="?",
    epoch="timestamp",
    percentile_sql="percentile_cont({col}, {fraction})",
    bucket_sql="(CAST({epoch} / {seconds} AS INTEGER) * {seconds})",  # timestamps are positive: truncation = floor
)
_ROWS_PER_INSERT = 100  # fewer if the library allows fewer variables (SQLite < 3.32: 999)


@lru_cache(maxsize=8)
def _insert_sql(rows: int) -> str:
    one = f"({', '.join('?' * len(NAMES))})"
    return f"INSERT INTO {TABLE} ({', '.join(NAMES)}) VALUES {', '.join([one] * rows)}"


# The stdlib binds only exact int, float, str and bytearray without an "adaptation" lookup; None and bool
# take a slow path (a registry miss, then two getattr calls that raise). A history row has a dozen NULLs and
# two flags: these identity adapters (None stays NULL, a bool its 0/1) halve the cost of binding a row.
# They change nothing for any other sqlite3 user in the process.
sqlite3.register_adapter(type(None), lambda value: value)
sqlite3.register_adapter(bool, int)


class _PercentileCont:
    """``percentile_cont(value, fraction)``: PostgreSQL's ``percentile_cont`` as an SQLite aggregate."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.fraction = 0.5

    def step(self, value: float | None, fraction: float) -> None:
        if value is not None:
            self.values.append(value)
        self.fraction = fraction

    def finalize(self) -> float | None:
        return percentile_cont(self.values, self.fraction)


def percentile_cont(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between the closest ranks, as PostgreSQL computes it."""
    if not values:
        return None
    values.sort()
    position = (len(values) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


class SQLiteStore:
    """History in one SQLite file."""

    dialect = SQLITE

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout_s
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="labgate-history-write")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="labgate-history-read")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    @property
    def display_url(self) -> str:
        return str(self.path)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._run(self._write_thread, self._connect_and_migrate)
        self._reader = await self._run(self._read_thread, self._connect)

    async def write(self, rows: Sequence[Row]) -> None:
        await self._run(self._write_thread, self._insert, rows)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self._run(self._read_thread, self._select, sql, params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._run(self._write_thread, self._change, sql, params)

    async def aclose(self) -> None:
        for thread, attr in ((self._write_thread, "_writer"), (self._read_thread, "_reader")):
            conn = getattr(self, attr)
            if conn is not None:
                await self._run(thread, conn.close)
                setattr(self, attr, None)
            thread.shutdown(wait=True)

    # --- on the store's threads ------------------------------------------------

    @staticmethod
    async def _run(thread: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(thread, fn, *args)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across a process crash, fsync at checkpoints
        conn.create_aggregate("percentile_cont", 2, _PercentileCont)  # type: ignore[arg-type]
        conn.row_factory = sqlite3.Row
        return conn

    def _to_wal(self, conn: sqlite3.Connection) -> None:
        """WAL mode, waiting up to the busy timeout: changing the journal mode does not call SQLite's busy
        handler, so a sibling process writing to a new file (another worker, the history writer) makes it
        fail at once with "database is locked" instead of waiting as every other statement does."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                    return
                problem = f"{self.path}: cannot switch to WAL mode"
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
                problem = str(exc)
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError(problem)
            time.sleep(0.01)

    def _connect_and_migrate(self) -> sqlite3.Connection:
        conn = self._connect()
        self._to_wal(conn)
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then find it done
        try:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
            # every version not yet applied (not only those above the highest): branches that each added
            # a migration may be merged in any order, and a gap filled later is still applied
            applied = {row[0] for row in conn.execute(f"SELECT version FROM {VERSION_TABLE}")}
            for version in sorted(v for v in SQLITE_MIGRATIONS if v not in applied):
                for statement in SQLITE_MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        return conn

    def _insert(self, rows: Sequence[Row]) -> None:
        conn = self._conn(self._writer)
        step = min(_ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(NAMES))
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(rows), step):
                part = rows[start:start + step]
                conn.execute(_insert_sql(len(part)), list(itertools.chain.from_iterable(part)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _select(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return [dict(row) for row in self._conn(self._reader).execute(sql, params)]

    def _change(self, sql: str, params: Sequence[Any]) -> int:
        return self._conn(self._writer).execute(sql, params).rowcount

    def _conn(self, conn: sqlite3.Connection | None) -> sqlite3.Connection:
        if conn is None:
            raise RuntimeError(f"history store {self.path} is not open")
        return conn
