"""The side tap on an Anthropic stream relayed untranslated to an Anthropic client.

:class:`MessageTap` has :class:`.stream.StreamTranslator`'s interface
(``feed``, ``started``, ``done``) so the adapter relays either the same way,
but it returns the upstream's own events, byte for byte, and only reads
usage, the stop reason and the first token's time on the way. An ``error``
event is not forwarded: it is raised as the labgate error it stands for, so
the surface ends the stream with one error event and the failure is recorded.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from labgate.errors import UpstreamBadResponseError
from labgate.providers.anthropic.stream import merge_usage, stream_error
from labgate.providers.anthropic.translate import finish_reason
from labgate.providers.base import StreamInfo
from labgate.providers.http import upstream_snippet
from labgate.providers.sse import SSEBuffer, event_fields

# Events whose data the tap reads; all others pass unread.
_READ = frozenset({"message_start", "message_delta", "error"})
_BEFORE_START = frozenset({"message_start", "error", "ping"})


class MessageTap:
    """Pass one Anthropic stream through.

    :attr:`started` is set after ``message_start``, :attr:`done` after ``message_stop``.
    """

    def __init__(self, info: StreamInfo, *, where: str, secrets: tuple[str, ...] = ()) -> None:
        self.info = info
        self.where = where
        self.secrets = secrets  # the provider's credentials, masked in an error event's message
        self.started = False
        self.done = False
        self._buffer = SSEBuffer()
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The whole events this chunk completes, as the upstream framed them."""
        out: list[bytes] = []
        for event in self._buffer.feed(chunk):
            if self.done:
                break
            name, data = event_fields(event)
            if not data:
                continue  # a comment or keep-alive
            if name is None:  # no `event:` line: the type is in the data
                name = _type_of(data, self.where)
            if not self.started and name not in _BEFORE_START:
                raise UpstreamBadResponseError(f"{self.where} sent {upstream_snippet(name)} before 'message_start'")
            if name in _READ:
                self._read(name, data)
            elif name == "content_block_delta" and self.info.first_token is None:
                self.info.first_token = time.perf_counter()
            elif name == "message_stop":
                self.done = True
                self.info.finish_reason = finish_reason(self._stop_reason)
            out.append(event + b"\n\n")
        self.info.chunks += len(out)
        return b"".join(out)

    def _read(self, name: str, data: bytes) -> None:
        event = _object(data, self.where)
        if name == "error":
            raise stream_error(event, self.where, self.secrets)
        if name == "message_start":
            message = event.get("message")
            if not isinstance(message, dict):
                raise UpstreamBadResponseError(f"{self.where} sent 'message_start' without a message")
            self.started = True
            merge_usage(self._usage, message.get("usage"), self.info)
            return
        delta = event.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason"):
            self._stop_reason = delta["stop_reason"]
        merge_usage(self._usage, event.get("usage"), self.info)


def _object(data: bytes, where: str) -> dict[str, Any]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamBadResponseError(
            f"{where} sent a stream event that is not JSON: {upstream_snippet(data)}") from exc
    if not isinstance(event, dict):
        raise UpstreamBadResponseError(f"{where} sent a stream event that is not an object")
    return event


def _type_of(data: bytes, where: str) -> str | None:
    kind = _object(data, where).get("type")
    return kind if isinstance(kind, str) else None
