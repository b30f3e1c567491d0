"""The small protocol every history store implements, and the SQL dialect it speaks.

A store moves rows in and out; it knows nothing of records, capture modes or
analytics. Queries (``query.py``, ``analytics.py``) are written once in SQL
with ``?`` placeholders and the few dialect-specific fragments come from
:class:`Dialect`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Row = tuple[Any, ...]  # one ``requests`` row, in ``schema.NAMES`` order; timestamp in Unix seconds


@dataclass(frozen=True, slots=True)
class Dialect:
    """The SQL fragments that differ between SQLite and PostgreSQL."""

    name: str
    like: str  # case-insensitive LIKE
    time_param: str  # a Unix-seconds parameter, as the timestamp column's type
    epoch: str  # the timestamp column as Unix seconds
    percentile_sql: str  # format with col=, fraction=
    bucket_sql: str  # format with epoch=, seconds=

    def percentile(self, column: str, fraction: float) -> str:
        """The continuous (linearly interpolated) percentile of ``column``; NULLs ignored."""
        return self.percentile_sql.format(col=column, fraction=fraction)

    def bucket(self, seconds: int) -> str:
        """The start of the ``seconds``-wide UTC time bucket of each row, in Unix seconds."""
        return self.bucket_sql.format(epoch=self.epoch, seconds=int(seconds))


class Store(Protocol):
    """Where history rows live: SQLite (embedded default) or PostgreSQL."""

    dialect: Dialect

    @property
    def display_url(self) -> str:
        """Where the store is, safe to print (no password)."""
        ...

    async def open(self) -> None:
        """Connect, and create or migrate the schema."""
        ...

    async def write(self, rows: Sequence[Row]) -> None:
        """Insert rows in one transaction: all of them, or none (then raise)."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a query (``?`` placeholders); timestamps come back as Unix seconds."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def aclose(self) -> None: ...
