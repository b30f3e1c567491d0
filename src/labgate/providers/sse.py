"""Incremental Server-Sent Events framing for upstream streams.

Splits a byte stream into whole events without copying more than it must;
callers look at only the events they care about and pass the rest on.

An event that arrives in many pieces is kept as a list of pieces and joined
once, when its blank line arrives: linear in its size, however it is split
(re-joining the pending bytes on every piece would be quadratic). Its size
is bounded by what the connection lets through (``max_response_bytes``).
"""

from __future__ import annotations


class SSEBuffer:
    """Feed it network chunks; get back the complete events (each without its blank line)."""

    __slots__ = ("_cr", "_parts")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # an event not yet terminated, CRLF already folded to LF
        self._cr = False  # the last chunk ended with a CR whose LF may start the next one

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" in chunk:  # CRLF framing; a chunk may end between \r and \n
            chunk = chunk.replace(b"\r\n", b"\n")
            if chunk.endswith(b"\r"):
                self._cr = True
                chunk = chunk[:-1]
        parts = self._parts
        if not parts:
            data = chunk
        elif b"\n\n" in chunk or (chunk[:1] == b"\n" and parts[-1][-1:] == b"\n"):
            parts.append(chunk)
            data = b"".join(parts)
            parts.clear()
        else:
            if chunk:
                parts.append(chunk)
            return []
        *events, pending = data.split(b"\n\n")
        if pending:
            parts.append(pending)
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated."""
        return b"".join(self._parts) + (b"\r" if self._cr else b"")


def event_fields(event: bytes) -> tuple[str | None, bytes]:
    """The ``event:`` name (or None) and the joined ``data:`` payload of one event."""
    name: str | None = None
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode()
    return name, b"\n".join(data)
