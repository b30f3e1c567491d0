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

What can be rescued: an OpenAI-dialect chat stream with one choice whose
events so far carry text only (a tool call cannot be continued from
prefill), when another deployment remains. Everything else ends with the
SSE error event, as before. Engines that continue a trailing assistant
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
from labgate.providers.base import Reply, Stream
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
        return (isinstance(error, UpstreamError) and record.endpoint == "chat" and record.dialect == "openai"
                and record.rescues < self.max_rescues and payload is not None and payload.get("n", 1) in (1, None))

    async def resume(self, rt: Runtime, record: RequestRecord, broken: Stream, failed: Deployment,
                     error: BaseException, sent: Sequence[bytes]) -> tuple[Stream, Deployment] | None:
        """A stream continuing ``sent`` on another deployment, or None when none can (the caller re-raises).

        On success the broken stream is closed and ``failed``'s lease released: its attempt is over.
        """
        if not isinstance(error, UpstreamError) or not self.can_rescue(record, error):
            return None
        partial = partial_text(sent)
        payload = record.payload
        if partial is None or payload is None:
            return None
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
                                        queue=rt.queue, limits=rt.limiter)
        except LabgateError:
            return None
        if isinstance(result, Reply):  # not for a stream request; kept for the type checker
            return None
        record.first_token = broken.info.first_token  # the client's first token came from the broken stream
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
