"""Export records as CSV, JSON (one array) or JSON Lines, streamed a page at a time."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson

from labgate.store.base import Store
from labgate.store.query import ALL, Filter, walk

FORMATS = ("csv", "json", "jsonl")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json",
                 "jsonl": "application/x-ndjson"}


async def export(store: Store, where: Filter, fmt: str) -> AsyncIterator[bytes]:
    """The matching records, oldest first, encoded as ``fmt``, in chunks of bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "csv":
        async for chunk in _csv(store, where):
            yield chunk
        return
    first = True
    if fmt == "json":
        yield b"["
    async for row in walk(store, where):
        if fmt == "jsonl":
            yield orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
        else:
            yield (b"\n" if first else b",\n") + orjson.dumps(row)
            first = False
    if fmt == "json":
        yield b"\n]\n" if not first else b"]\n"


async def _csv(store: Store, where: Filter) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    out = csv.writer(buffer)
    out.writerow(ALL)
    async for row in walk(store, where):
        out.writerow([_cell(row[name]) for name in ALL])
        if buffer.tell() > 65536:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return value
