"""Structured logs: one JSON line per request, written off the hot path.

Lines are buffered and flushed a few times a second (or at shutdown), so a
request costs one dict and one orjson call, not a write system call. A request
slower than ``logging.slow_request_ms`` is also logged at warning on the
operational log (stderr), with its breakdown under ``request``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import IO, Any

import orjson

from labgate.record import RequestRecord

_FLUSH_EVERY_S = 0.2
_FLUSH_AT_BYTES = 64 * 1024


class AccessLog:
    """Buffers request lines and writes them in batches."""

    def __init__(self, stream: IO[bytes] | None = None, *, enabled: bool = True,
                 client_ip: bool = True, slow_ms: float | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self.enabled = enabled
        self._slow_s = None if slow_ms is None else slow_ms / 1000
        self._client_ip = client_ip
        self._buffer: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, record: RequestRecord) -> None:
        if self._slow_s is not None and record.finished is not None and \
                record.finished - record.started >= self._slow_s:
            log_slow(record)
        if not self.enabled:
            return
        entry = record.as_log()
        if not self._client_ip:
            entry["client_ip"] = None
        line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)  # _append, inline: once per request
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT_BYTES or self._timer is None:
            self._flush_or_arm()

    def write_refusal(self, entry: dict[str, Any]) -> None:
        """A request refused before any surface (wrong Host, foreign Origin, no such route): the
        request line's facts, since no record was opened for it (docs/observability.md)."""
        if not self.enabled:
            return
        if not self._client_ip:
            entry["client_ip"] = None
        self._append(entry)

    def _append(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        self._buffer.append(line)
        self._size += len(line)
        self._flush_or_arm()

    def _flush_or_arm(self) -> None:
        """Flush a full buffer; else make sure a flush is due within ``_FLUSH_EVERY_S``."""
        if self._size >= _FLUSH_AT_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(_FLUSH_EVERY_S, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            logging.getLogger("labgate").warning("could not write %d bytes of request log", len(data))


def log_slow(record: RequestRecord) -> None:
    """A slow request at warning, with where its time went."""
    usage, first = record.usage, record.first_token or record.first_byte
    breakdown: dict[str, Any] = {
        "request_id": record.request_id, "model": record.model, "deployment": record.deployment,
        "status": record.status, "outcome": record.outcome, "stream": record.stream,
        "latency_ms": record.latency_ms, "ttft_ms": record.ttft_ms, "attempts": record.attempts,
        "failed_attempts": [f"{f.deployment}: {f.error.code}" for f in record.failures] or None,
        "completion_tokens": usage.completion_tokens if usage else None, "tokens_per_s": None,
        "trace_id": None if record.trace is None else record.trace.trace_hex,
    }
    if usage and usage.completion_tokens and first is not None and record.finished is not None \
            and record.finished > first:
        breakdown["tokens_per_s"] = round(usage.completion_tokens / (record.finished - first), 1)
    trace = record.trace
    if trace is not None and trace.attempts:  # traced: time in each upstream attempt
        breakdown["upstream_ms"] = [round((end - start) * 1000, 3) for _, _, start, end, _, _ in trace.attempts]
    logging.getLogger("labgate.requests").warning(
        "slow request %s: %s ms (%s, %d attempt(s), first token %s ms)", record.request_id, record.latency_ms,
        record.deployment or record.model, record.attempts, record.ttft_ms, extra={"request": breakdown})


class JsonFormatter(logging.Formatter):
    """Operational log records as JSON lines (same stream shape as the access log)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                 "logger": record.name, "message": record.getMessage()}
        request = getattr(record, "request", None)
        if request is not None:
            entry["request"] = request
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("labgate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
