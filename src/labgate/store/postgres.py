"""History in PostgreSQL (asyncpg): shared by every gateway replica.

Rows go in with ``COPY`` (``copy_records_to_table``, binary protocol), one
statement per batch, so a batch is all in or all out. The schema is created
or migrated when the store opens, under an advisory lock so that replicas
starting together do not race. Install with ``pip install 'labgate[postgres]'``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from labgate.store.base import Dialect, Row
from labgate.store.schema import NAMES, POSTGRES_MIGRATIONS, TABLE, VERSION_TABLE

POSTGRES = Dialect(
    name="postgres",
    like="ILIKE",
    time_param="to_timestamp(?)",
    epoch="EXTRACT(EPOCH FROM timestamp)::float8",
    percentile_sql="percentile_cont({fraction}) WITHIN GROUP (ORDER BY {col})",
    bucket_sql="(floor({epoch} / {seconds}) * {seconds})",
)
APPLICATION_NAME = "labgate"
_MIGRATION_LOCK = 0x6C616267_61746531  # "labgate1": the advisory lock held while migrating
_PLACEHOLDER = re.compile(r"\?")


@lru_cache(maxsize=256)
def numbered(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, …`` (our SQL never holds a literal ``?``)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _clean(value: Any) -> Any:
    """PostgreSQL text and JSON cannot hold NUL characters (SQLite can): replace them with U+FFFD."""
    if isinstance(value, str) and ("\x00" in value or "\\u0000" in value):
        return value.replace("\x00", "\ufffd").replace("\\u0000", "\\ufffd")
    return value


class PostgresStore:
    """History in a PostgreSQL database (``store.url: postgresql://…``)."""

    dialect = POSTGRES

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pool: Any = None
        self._asyncpg: Any = None
        self._writer: Any = None
        self._writing = asyncio.Lock()

    @property
    def display_url(self) -> str:
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))

    async def open(self) -> None:
        try:
            import asyncpg
        except ImportError:
            raise RuntimeError("a postgresql:// history store needs asyncpg: "
                               "pip install 'labgate[postgres]'") from None
        # application_name: labgate's sessions are recognisable in pg_stat_activity (unless the URL names them)
        settings = {} if "application_name=" in self.url else {"application_name": APPLICATION_NAME}
        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self._pool_size, command_timeout=60,
                                         timeout=10, server_settings=settings)  # timeout: to connect
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
                # every version not yet applied (a gap filled by a later merge is still applied)
                applied = {r[0] for r in await conn.fetch(f"SELECT version FROM {VERSION_TABLE}")}
                for version in sorted(v for v in POSTGRES_MIGRATIONS if v not in applied):
                    for statement in POSTGRES_MIGRATIONS[version]:
                        await conn.execute(statement)
                    await conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES ($1)", version)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._asyncpg = asyncpg

    async def write(self, rows: Sequence[Row]) -> None:
        records = [(row[0], datetime.fromtimestamp(row[1], UTC), *row[2:]) for row in rows]
        async with self._writing:  # one connection, one COPY at a time
            conn = await self._writer_connection()
            try:
                await conn.copy_records_to_table(TABLE, records=records, columns=NAMES)
            except self._asyncpg.exceptions.DataError:
                cleaned = [tuple(_clean(v) for v in record) for record in records]
                if cleaned == records:
                    raise
                await conn.copy_records_to_table(TABLE, records=cleaned, columns=NAMES)

    async def _writer_connection(self) -> Any:
        """The connection writes use, held between batches (no pool reset round trip per batch)."""
        conn = self._writer
        if conn is not None and not conn.is_closed():
            return conn
        if self._pool is None:
            raise RuntimeError(f"history store {self.display_url} is not open")
        if conn is not None:  # broken (server restarted): give it back, take a fresh one
            self._writer = None
            await self._pool.release(conn)
        self._writer = await self._pool.acquire()
        return self._writer

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self._acquire() as conn:
            records = await conn.fetch(numbered(sql), *params)
        return [{k: v.timestamp() if isinstance(v, datetime) else v for k, v in r.items()} for r in records]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._acquire() as conn:
            status = await conn.execute(numbered(sql), *params)
        tail = status.rsplit(" ", 1)[-1]  # "DELETE 12"
        return int(tail) if tail.isdigit() else 0

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if self._writer is not None:
                await pool.release(self._writer)
                self._writer = None
            await pool.close()

    def _acquire(self) -> Any:
        if self._pool is None:
            raise RuntimeError(f"history store {self.display_url} is not open")
        return self._pool.acquire()
