"""OpenAI ``chat.completion.chunk`` SSE → Anthropic Messages stream events, for Anthropic clients.

:class:`EventTranslator` is fed the OpenAI SSE bytes an OpenAI-dialect
deployment streams (split anywhere) and returns Anthropic's exact event
sequence: ``message_start``, ``ping``, then per content block
``content_block_start``, ``content_block_delta`` (``text_delta`` or
``input_json_delta``) and ``content_block_stop``, then ``message_delta``
(``stop_reason``, ``stop_sequence``, ``usage``) and ``message_stop``. It does
no I/O, so tests drive it with recorded streams.

OpenAI numbers tool calls among tool calls only; Anthropic numbers every
block. Each OpenAI tool index gets the next block index when its first delta
arrives and keeps it, so text and several tool calls come out as blocks
``0, 1, 2, …`` in the order they started.
"""

from __future__ import annotations

from typing import Any

import orjson

from labgate.errors import UpstreamBadResponseError, UpstreamStatusError
from labgate.providers.anthropic.inbound import anthropic_usage, stop_reason
from labgate.providers.anthropic.translate import MESSAGE_ID_PREFIX, dialect_id
from labgate.providers.http import upstream_snippet
from labgate.providers.sse import SSEBuffer, event_fields

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_DONE = b"[DONE]"


def event(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventTranslator:
    """Translate one OpenAI chat stream; :attr:`done` once ``message_stop`` has been produced.

    The message's usage is only known at the end (OpenAI's usage chunk), so
    ``message_start`` reports zero tokens and ``message_delta`` the real
    ``input_tokens`` and ``output_tokens``, which is where the anthropic SDK
    takes its final counts from.
    """

    def __init__(self, *, where: str = "the upstream") -> None:
        self.where = where
        self.started = False
        self.done = False
        self._buffer = SSEBuffer()
        self._blocks = 0  # Anthropic blocks started so far
        self._open: int | None = None  # the block being written, if any
        self._open_text = False
        self._tools: dict[int | str, int] = {}  # OpenAI tool-call index → Anthropic block index
        self._last_tool: int | str = 0
        self._choice: dict[str, Any] = {}  # finish_reason (and vLLM's stop_reason) once known
        self._usage: Any = None

    @classmethod
    def continuing(cls, *, blocks: int, open_text: int | None, where: str) -> EventTranslator:
        """A translator for a stream that follows Anthropic events already sent (stream rescue):
        ``message_start`` is not sent again, and a text block still open (at ``open_text``) goes on."""
        translator = cls(where=where)
        translator.started, translator._blocks = True, blocks
        translator._open, translator._open_text = open_text, open_text is not None
        return translator

    def feed(self, chunk: bytes) -> bytes:
        """The Anthropic events for the OpenAI events this chunk completes (often ``b""``)."""
        out: list[bytes] = []
        for raw in self._buffer.feed(chunk):
            if self.done:
                break
            _, data = event_fields(raw)
            if not data:
                continue
            if data == _DONE:
                self._finish(out)
            else:
                self._chunk(_object(data, self.where), out)
        return b"".join(out)

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if "error" in chunk and not chunk.get("choices"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamStatusError(f"{self.where} sent an error in its stream: {message}",
                                      upstream_status=502)
        if not self.started:
            self._start(chunk, out)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            if choice.get("finish_reason"):
                self._choice = choice

    def _start(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        self.started = True
        message: dict[str, Any] = {
                   "id": dialect_id(chunk.get("id"), MESSAGE_ID_PREFIX), "type": "message", "role": "assistant",
                   "model": chunk.get("model"), "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        out.append(event("message_start", {"type": "message_start", "message": message}))
        out.append(PING)

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        text = delta.get("content") or delta.get("refusal")
        if isinstance(text, str) and text:
            if not self._open_text:
                self._begin({"type": "text", "text": ""}, out)
                self._open_text = True
            out.append(event("content_block_delta", {"type": "content_block_delta", "index": self._open,
                                                     "delta": {"type": "text_delta", "text": text}}))
        for position, call in enumerate(delta.get("tool_calls") or ()):
            if isinstance(call, dict):
                self._tool_delta(call, position, out)

    def _tool_delta(self, call: dict[str, Any], position: int, out: list[bytes]) -> None:
        tool = call.get("index")
        if not isinstance(tool, int):  # engines that leave out the index: a new id is a new call
            tool = (call.get("id") or self._last_tool) if self._tools else position
        self._last_tool = tool
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        index = self._tools.get(tool)
        if index is None:
            block_id = call.get("id") or f"toolu_{self._blocks}"
            self._begin({"type": "tool_use", "id": block_id, "name": function.get("name") or "",
                         "input": {}}, out)
            index = self._tools[tool] = self._blocks - 1
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            # A fragment for a tool call whose block already ended (engines that interleave
            # parallel calls) still carries that block's index.
            out.append(event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "input_json_delta",
                                                               "partial_json": fragment}}))

    def _begin(self, block: dict[str, Any], out: list[bytes]) -> None:
        self._end(out)
        self._open = self._blocks
        self._blocks += 1
        out.append(event("content_block_start", {"type": "content_block_start", "index": self._open,
                                                 "content_block": block}))

    def _end(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": self._open}))
            self._open = None
            self._open_text = False

    def _finish(self, out: list[bytes]) -> None:
        if not self.started:
            raise UpstreamBadResponseError(f"{self.where} ended its stream before any chunk")
        self._end(out)
        reason, sequence = stop_reason(self._choice)
        out.append(event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                           "usage": anthropic_usage(self._usage)}))
        out.append(event("message_stop", {"type": "message_stop"}))
        self.done = True


def _object(data: bytes, where: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamBadResponseError(
            f"{where} sent a stream event that is not JSON: {upstream_snippet(data)}") from exc
    if not isinstance(parsed, dict):
        raise UpstreamBadResponseError(f"{where} sent a stream event that is not an object")
    return parsed
