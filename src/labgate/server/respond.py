"""Response heads: the status line, the handler's headers, and the framing headers the server owns.

Framing headers (content-length, transfer-encoding, connection) are the server's to write; a
handler's ``connection: close`` is honoured, and its content-length is kept only on a stream (a
whole body's length is its length). How the body then goes on the wire is the returned mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from http import HTTPStatus

from labgate.server.messages import Response

log = logging.getLogger("labgate.server")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# How a response body goes on the wire.
NO_BODY, WHOLE, CHUNKED, RAW = range(4)

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_OWN_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "date"})


class HeadRenderer:
    """Renders response heads; keeps the ``date`` line of the current second."""

    __slots__ = ("_date_at", "_date_line")

    def __init__(self) -> None:
        self._date_at = 0
        self._date_line = ""

    def _date(self) -> str:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date_line = f"date: {formatdate(now, usegmt=True)}\r\n"
        return self._date_line

    def render(self, response: Response, *, send_body: bool, close: bool,
               http10: bool) -> tuple[bytes, int, bool, int | None]:
        """The head's bytes, how the body goes out, whether to close after it, and any declared length."""
        status = response.status
        line = _STATUS_LINES.get(status)
        lines = [line if line is not None and status >= 200 else _status_line(status)]
        stream = response.stream
        length: int | None = None
        dated = False
        for name, value in response.headers:
            key = name.lower()
            if key in _OWN_HEADERS:
                if key == "date":
                    dated = True
                elif key == "connection":
                    close = close or "close" in value.lower()
                    continue
                elif key == "content-length" and stream is not None:
                    length = int(value)
                    if length < 0:
                        raise ValueError(f"negative content-length {value!r}")
                    continue
                else:
                    continue
            lines.append(f"{name}: {value}\r\n")
        if not dated:
            lines.append(self._date_line if int(time.time()) == self._date_at else self._date())
        if status == 204 or status == 304:
            mode = NO_BODY
        elif stream is None:
            lines.append(f"content-length: {len(response.body)}\r\n")
            mode = WHOLE
        elif length is not None:
            lines.append(f"content-length: {length}\r\n")
            mode = RAW
        elif http10:  # HTTP/1.0 has no chunked coding: the close ends the body
            close = True
            mode = RAW
        else:
            lines.append("transfer-encoding: chunked\r\n")
            mode = CHUNKED
        if close:
            lines.append("connection: close\r\n")
        elif http10:
            lines.append("connection: keep-alive\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        # every line ends in exactly one CRLF; a CR or LF inside a name or value would split the head
        if head.count("\n") != len(lines) or head.count("\r") != len(lines):
            raise ValueError(f"CR or LF in the headers of a {status} response")
        return head.encode("latin-1"), mode if send_body else NO_BODY, close, length


def _status_line(status: int) -> str:
    if type(status) is not int or not 200 <= status <= 999:  # a 1xx is not an answer
        raise ValueError(f"invalid status for a response: {status!r}")
    return f"HTTP/1.1 {status} \r\n"


async def aclose(stream: AsyncIterator[bytes]) -> None:
    """Close a response stream, logging (not raising) what its cleanup raised."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # the answer is over either way; its cleanup's failure is only worth a log line
            log.exception("response stream failed while closing")
