"""Anthropic Messages stream events → OpenAI ``chat.completion.chunk`` SSE bytes.

:class:`StreamTranslator` is fed raw upstream bytes as they arrive (split
anywhere) and returns the OpenAI SSE bytes to forward, filling a
:class:`StreamInfo` on the side. It does no I/O, so tests drive it with
recorded streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from labgate.errors import LabgateError, UpstreamBadResponseError
from labgate.providers.anthropic.translate import (
    CHAT_ID_PREFIX,
    cached_tokens,
    dialect_id,
    finish_reason,
    read_usage,
    usage_json,
)
from labgate.providers.base import StreamInfo
from labgate.providers.http import error_for_status, upstream_snippet
from labgate.providers.sse import SSEBuffer, event_fields

# Anthropic error type → the HTTP status it stands for outside a stream (overloaded is 529).
ERROR_STATUS: Mapping[str, int] = MappingProxyType({
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
})

DONE = b"data: [DONE]\n\n"


class StreamTranslator:
    """Translate one Anthropic stream; :attr:`started` after ``message_start``, :attr:`done` after ``message_stop``.

    OpenAI tool calls carry an ``index`` counting tool calls only, so each
    ``tool_use`` block gets the next index when it starts and keeps it for its
    deltas, however blocks interleave. An ``error`` event raises the labgate
    error its type stands for (``overloaded_error`` → retryable
    :class:`UpstreamStatusError`).
    """

    def __init__(self, info: StreamInfo, *, include_usage: bool, created: int, where: str,
                 secrets: tuple[str, ...] = ()) -> None:
        self.info = info
        self.include_usage = include_usage
        self.created = created
        self.where = where
        self.secrets = secrets  # the provider's credentials, masked in an error event's message
        self.started = False
        self.done = False
        self._buffer = SSEBuffer()
        self._head: dict[str, Any] = {}
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._text_blocks: set[int] = set()
        self._handlers: Mapping[str, Callable[[dict[str, Any]], list[dict[str, Any] | bytes]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
            "error": self._error,
        }

    def feed(self, chunk: bytes) -> bytes:
        """The OpenAI SSE bytes for the events this chunk completes (often ``b""``)."""
        out: list[bytes] = []
        for event in self._buffer.feed(chunk):
            if self.done:
                break
            name, data = event_fields(event)
            if not data:
                continue  # a comment or keep-alive
            for item in self._handle(name, data):
                out.append(item if isinstance(item, bytes)
                           else b"data: " + orjson.dumps(item) + b"\n\n")
        self.info.chunks += len(out)
        return b"".join(out)

    def _handle(self, name: str | None, data: bytes) -> list[dict[str, Any] | bytes]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamBadResponseError(
                f"{self.where} sent a stream event that is not JSON: {upstream_snippet(data)}") from exc
        if not isinstance(event, dict):
            raise UpstreamBadResponseError(f"{self.where} sent a stream event that is not an object")
        kind = event.get("type") or name
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if not self.started and kind not in ("message_start", "error", "ping"):
            raise UpstreamBadResponseError(
                f"{self.where} sent {upstream_snippet(kind)} before 'message_start'")
        # ping, content_block_stop and event types added later carry nothing to forward.
        return handler(event) if handler is not None else []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self._head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                           "finish_reason": finish}]}

    def _message_start(self, event: dict[str, Any]) -> list[dict[str, Any] | bytes]:
        message = event.get("message")
        if not isinstance(message, dict):
            raise UpstreamBadResponseError(f"{self.where} sent 'message_start' without a message")
        self.started = True
        self._head = {"id": dialect_id(message.get("id"), CHAT_ID_PREFIX), "object": "chat.completion.chunk",
                      "created": self.created, "model": message.get("model")}
        self._merge_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, event: dict[str, Any]) -> list[dict[str, Any] | bytes]:
        block = event.get("content_block")
        index = event.get("index")
        if not isinstance(block, dict) or not isinstance(index, int):
            return []
        if block.get("type") == "text":
            self._text_blocks.add(index)
            text = block.get("text")
            return [self._chunk({"content": text})] if text else []
        if block.get("type") != "tool_use":
            return []  # thinking, server tools: nothing an OpenAI client can read
        tool_index = self._tool_index[index] = len(self._tool_index)
        given = block.get("input")
        arguments = orjson.dumps(given).decode() if given else ""
        return [self._chunk({"tool_calls": [{
            "index": tool_index, "id": block.get("id"), "type": "function",
            "function": {"name": block.get("name"), "arguments": arguments}}]})]

    def _block_delta(self, event: dict[str, Any]) -> list[dict[str, Any] | bytes]:
        if self.info.first_token is None:
            self.info.first_token = time.perf_counter()
        delta = event.get("delta")
        index = event.get("index")
        if not isinstance(delta, dict):
            return []
        if delta.get("type") == "text_delta" and index in self._text_blocks:
            text = delta.get("text")
            return [self._chunk({"content": text})] if text else []
        if delta.get("type") == "input_json_delta" and index in self._tool_index:
            fragment = delta.get("partial_json")
            if not fragment:
                return []
            return [self._chunk({"tool_calls": [{"index": self._tool_index[index],
                                                 "function": {"arguments": fragment}}]})]
        return []

    def _message_delta(self, event: dict[str, Any]) -> list[dict[str, Any] | bytes]:
        delta = event.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason"):
            self._stop_reason = delta["stop_reason"]
        self._merge_usage(event.get("usage"))
        return []

    def _message_stop(self, event: dict[str, Any]) -> list[dict[str, Any] | bytes]:
        self.done = True
        finish = finish_reason(self._stop_reason)
        self.info.finish_reason = finish
        out: list[dict[str, Any] | bytes] = [self._chunk({}, finish)]
        if self.include_usage and self.info.usage is not None:
            out.append({**self._head, "choices": [],
                        "usage": usage_json(self.info.usage, cached=cached_tokens(self._usage))})
        out.append(DONE)
        return out

    def _error(self, event: dict[str, Any]) -> list[dict[str, Any] | bytes]:
        raise stream_error(event, self.where, self.secrets)

    def _merge_usage(self, usage: Any) -> None:
        merge_usage(self._usage, usage, self.info)


def stream_error(event: dict[str, Any], where: str, secrets: tuple[str, ...] = ()) -> LabgateError:
    """The labgate error an Anthropic ``error`` event stands for (``overloaded_error`` → 529)."""
    error = event.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    status = ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500
    return error_for_status(status, orjson.dumps(event), {}, f"{where} (in its stream)", secrets=secrets)


def merge_usage(merged: dict[str, Any], usage: Any, info: StreamInfo) -> None:
    """Fold one event's ``usage`` into ``merged`` and ``info``.

    message_delta's usage is cumulative but may leave out fields message_start gave.
    """
    if isinstance(usage, dict):
        merged.update((k, v) for k, v in usage.items() if v is not None)
        info.usage = read_usage(merged)
