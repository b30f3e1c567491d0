"""Request history: a record per request, stored in SQLite (default) or PostgreSQL.

    gateway.finish ─▶ WriterProcess.put (process.py; bounded; drop + count when full)
                      └▶ every 10 ms, one marshalled batch ─▶ the writer process's stdin
                         └▶ HistoryWriter (writer.py): records → rows (capture.py) in batches
                            └▶ Store.write (sqlite.py: WAL file │ postgres.py: COPY)
    (store.writer: thread runs the HistoryWriter in the gateway process instead)
    admin API / CLI ─▶ query.py (search, show, export) · analytics.py ─▶ Store.fetch

``store_for(url)`` picks the store from the URL; ``resolve_url`` turns the
config's ``store.url`` (or its absence) into one.
"""

from __future__ import annotations

import os
from pathlib import Path

from labgate.store.base import Dialect, Row, Store

__all__ = ["Dialect", "Row", "Store", "default_data_dir", "resolve_url", "store_for"]


def default_data_dir() -> Path:
    """``$LABGATE_DATA_DIR``, else ``$XDG_DATA_HOME/labgate``, else ``~/.local/share/labgate``."""
    given = os.environ.get("LABGATE_DATA_DIR")
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "labgate"


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def resolve_url(url: str | None, *, source: str | None = None) -> str:
    """The store URL the config means: a ``postgresql://`` URL or an absolute SQLite path.

    A relative SQLite path is relative to the config directory (or the
    directory holding ``labgate.yaml``), so ``serve`` and the CLI, given the
    same ``--config``, find the same file from any working directory.
    """
    if url is None:
        return str(default_data_dir() / "history.db")
    if is_postgres(url):
        return url
    path = Path(url.removeprefix("sqlite:///").removeprefix("sqlite://")).expanduser()  # SQLAlchemy's form
    if not path.is_absolute() and source:
        base = Path(source)
        if base.exists():
            path = (base if base.is_dir() else base.parent) / path
    return str(path.absolute())


def store_for(url: str) -> Store:
    """A (not yet opened) store for a resolved URL."""
    if is_postgres(url):
        from labgate.store.postgres import PostgresStore

        return PostgresStore(url)
    from labgate.store.sqlite import SQLiteStore

    return SQLiteStore(url)
