"""Incremental Server-Sent Events framing for upstream streams.

Splits a byte stream into whole events without copying more than it must;
callers look at only the events they care about and pass the rest on.
"""

from __future__ import annotations


class SSEBuffer:
    """Feed it network chunks; get back the complete events (each without its blank line)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk if self._pending else chunk
        if b"\r" in data:  # CRLF framing; a chunk may end between \r and \n
            data = data.replace(b"\r\n", b"\n")
        *events, self._pending = data.split(b"\n\n")
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated."""
        return self._pending


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
