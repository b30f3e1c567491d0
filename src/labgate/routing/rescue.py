"""Stream rescue: an upstream stream that fails after bytes were sent continues on the next deployment.

Without rescue, a stream that breaks mid-answer ends with an SSE error event
(the client has already received part of the answer, so it cannot be sent
again from the start). With ``resilience.stream_rescue: true`` the relay
asks :meth:`Rescue.resume` for a continuation instead: the text the client
has received so far becomes an assistant message at the end of the
conversation (assistant prefill), and the request goes through the attempt
loop again over the route's other deployments. The client receives one
stream: the partial answer, then the continuation's events, then a trailing
SSE comment (``: labgate rescued …``) that official SDKs ignore. The record
shows every attempt and the cut among its failures.

What can be rescued: a chat stream (``/v1/chat/completions``, or
``/v1/messages`` unless the request needs an Anthropic upstream) with one
choice whose events so far carry text only, when another deployment remains.
A stream whose events carry a tool call (or Anthropic thinking) is refused:
half a tool call cannot be continued from prefill, so it ends with the SSE
error event, as does everything else.

For a ``/v1/messages`` client the continuation is asked for in the OpenAI
dialect (``native`` left out) and joins the stream the client is reading:
an OpenAI-dialect stream is translated downstream by one
:class:`~labgate.providers.anthropic.inbound_stream.EventTranslator`, which
simply goes on; an Anthropic upstream's passed-through events are followed
by a translator that starts where they stopped (:class:`Continued`: no second
``message_start``, the open text block goes on at its index). Engines that continue a trailing assistant
message (llama.cpp, Ollama, Anthropic; vLLM with ``continue_final_message``)
give a seamless continuation; others answer the turn anew after the prefix.

Cost: while on, the relay keeps a reference to each event it forwarded
(no copy, no parsing); they are read only when a stream breaks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from labgate.errors import AttemptFailure, LabgateError, UpstreamError
from labgate.providers.anthropic.inbound import messages_to_chat_request
from labgate.providers.anthropic.inbound_stream import EventTranslator
from labgate.providers.base import Dialect, Reply, Stream
from labgate.record import RequestRecord
from labgate.routing.attempts import attempt
from labgate.routing.balancer import plan
from labgate.routing.table import Deployment

if TYPE_CHECKING:
    from labgate.runtime import Runtime

_DATA = b"data:"


@dataclass(frozen=True, slots=True)
class Rescue:
    """Continues broken chat streams on another deployment (``resilience.stream_rescue``)."""

    max_rescues: int = 1  # continuations per request; a second break ends the stream with the error event

    def can_rescue(self, record: RequestRecord, error: BaseException) -> bool:
        payload = record.payload
        return (isinstance(error, UpstreamError) and record.endpoint in ("chat", "messages")
                and record.rescues < self.max_rescues and payload is not None and payload.get("n", 1) in (1, None)
                and (record.endpoint == "chat" or _translatable(record)))

    async def resume(self, rt: Runtime, record: RequestRecord, broken: Stream, failed: Deployment,
                     error: BaseException, sent: Sequence[bytes]) -> tuple[Stream, Deployment] | None:
        """A stream continuing ``sent`` on another deployment, or None when none can (the caller re-raises).

        On success the broken stream is closed and ``failed``'s lease released: its attempt is over.
        """
        if not isinstance(error, UpstreamError) or not self.can_rescue(record, error):
            return None
        read = partial_text(sent) if broken.dialect == "openai" else anthropic_partial(sent)
        payload = record.payload
        if read is None or payload is None:
            return None
        partial = read if isinstance(read, str) else read[0]
        record.failures.append(AttemptFailure(failed.key, error))
        tried = {f.deployment for f in record.failures} | {failed.key}
        try:
            candidates = [d for d in plan(rt.table.resolve(record.model or ""), rt.circuit,
                                          max_attempts=rt.max_attempts + len(tried)) if d.key not in tried]
        except LabgateError:
            return None
        if not candidates:
            return None
        body = {**payload, "messages": [*payload["messages"], {"role": "assistant", "content": partial}]}
        elapsed = time.perf_counter() - record.started
        record.rescues += 1
        try:
            result, dep = await attempt(candidates, endpoint="chat", body=body, stream=True, circuit=rt.circuit,
                                        deadline=time.monotonic() + rt.request_timeout - elapsed, record=record,
                                        queue=rt.queue, limits=rt.limiter, pace=rt.pace)
        except LabgateError:
            return None
        if isinstance(result, Reply):  # not for a stream request; kept for the type checker
            return None
        record.first_token = broken.info.first_token  # the client's first token came from the broken stream
        if not isinstance(read, str):  # after an Anthropic upstream's own events: translated from where they stopped
            result = Continued(result, EventTranslator.continuing(blocks=read[1], open_text=read[2],
                                                                  where=f"provider {dep.provider!r}"))
        if rt.limiter is not None:  # the broken attempt's provider limits: settled with what it served
            rt.limiter.settle_served(record, failed, broken.info.usage, partial)
        try:
            with contextlib.suppress(Exception):  # closing a broken upstream may fail; the continuation goes on
                await broken.aclose()
        except BaseException:  # cancelled meanwhile: the continuation is given back too
            try:
                await result.aclose()
            finally:
                dep.release()
                failed.release()
            raise
        failed.release()  # the broken attempt's lease ends with it
        return result, dep


def trailer(record: RequestRecord, failed: str) -> bytes:
    """The SSE comment that ends a rescued stream: which deployment broke and which continued."""
    return (f": labgate rescued this stream: {failed} failed mid-answer, "
            f"{record.deployment} continued it (attempts={record.attempts})\n\n").encode()


def _translatable(record: RequestRecord) -> bool:
    """A ``/v1/messages`` request whose meaning the OpenAI dialect carries (the continuation is asked in it)."""
    try:
        native = orjson.loads(record.body or b"")
    except orjson.JSONDecodeError:
        return False
    return isinstance(native, dict) and messages_to_chat_request(native)[1] is None


class Continued:
    """An OpenAI-dialect continuation as the Anthropic events that follow ones already sent."""

    __slots__ = ("_inner", "_it", "_translator", "dialect", "info")

    def __init__(self, inner: Stream, translator: EventTranslator) -> None:
        self._inner, self._translator = inner, translator
        self._it = inner.__aiter__()
        self.info = inner.info
        self.dialect: Dialect = "anthropic"

    def __aiter__(self) -> Continued:
        return self

    async def __anext__(self) -> bytes:
        while not self._translator.done:
            out = self._translator.feed(await anext(self._it))
            if out:
                return out
        raise StopAsyncIteration

    async def aclose(self) -> None:
        await self._inner.aclose()


def anthropic_partial(events: Sequence[bytes]) -> tuple[str, int, int | None] | None:
    """From Anthropic events already sent: (their text, content blocks started, the text block still open),
    or None when they hold more than text (tool use, thinking) or cannot be read."""
    parts: list[str] = []
    blocks, open_text = 0, None
    for chunk in events:
        for line in chunk.split(b"\n"):
            if not line.startswith(_DATA):
                continue
            try:
                data: Any = orjson.loads(line[len(_DATA):])
            except orjson.JSONDecodeError:
                return None
            kind = data.get("type") if isinstance(data, dict) else None
            if kind == "content_block_start":
                block = data.get("content_block")
                if not isinstance(block, dict) or block.get("type") != "text":
                    return None  # tool_use, thinking, server tools: not continued from prefill
                open_text, blocks = blocks, blocks + 1
            elif kind == "content_block_delta":
                delta = data.get("delta")
                if not isinstance(delta, dict) or delta.get("type") != "text_delta" \
                        or not isinstance(delta.get("text"), str):
                    return None
                parts.append(delta["text"])
            elif kind == "content_block_stop":
                open_text = None
            elif kind not in ("message_start", "ping"):
                return None  # message_delta / message_stop: nothing left to continue; unknown events: not ours
    return "".join(parts), blocks, open_text


def partial_text(events: Sequence[bytes]) -> str | None:
    """The answer text carried by OpenAI chat events, or None when they hold more than text (tool calls)."""
    parts: list[str] = []
    for event in events:
        for line in event.split(b"\n"):
            if not line.startswith(_DATA):
                continue
            data = line[len(_DATA):].strip()
            if data == b"[DONE]":
                continue
            try:
                chunk: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                return None
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if choice.get("index", 0) != 0 or delta.get("tool_calls") or delta.get("function_call"):
                    return None
                text = delta.get("content")
                if isinstance(text, str):
                    parts.append(text)
    return "".join(parts)
