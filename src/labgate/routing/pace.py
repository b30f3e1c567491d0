"""Stream deadlines: a time-to-first-token deadline and an idle timeout between chunks.

``resilience.ttft_timeout_s`` and ``resilience.stream_idle_timeout_s`` (gateway.yaml),
overridden per requested model in ``resilience.routes``. Both are off by default
(``Runtime.pace`` is ``None`` and nothing here runs); the provider's ``timeout_s``
still bounds every wait.

First token. With a deadline, the attempt loop does not hand a stream to the
client until its first token has arrived (events before it, such as OpenAI's
role chunk or Anthropic's ``message_start``, are held and then sent in order).
No token within the deadline (counted from the attempt's start): the stream is
closed and the attempt fails with ``first_token_timeout``; nothing has reached
the client, so the attempt loop goes on to the next candidate, like any
upstream timeout (the circuit counts it: a deployment that cannot start an
answer in time is not serving).

Idle. After that, each chunk must follow the previous one within the idle
timeout; otherwise the stream fails with ``stream_idle_timeout``, which the
relay turns into stream rescue (when on) or one SSE error event in the
client's dialect. The record carries the error type either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field

from labgate.config.schema.gateway import ResilienceConfig
from labgate.errors import UpstreamTimeoutError
from labgate.providers.base import Dialect, Stream, StreamInfo

FIRST_TOKEN_TIMEOUT = "first_token_timeout"
STREAM_IDLE_TIMEOUT = "stream_idle_timeout"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """One route's stream deadlines in seconds (None: that one is off)."""

    first_token: float | None = None
    idle: float | None = None


@dataclass(frozen=True, slots=True)
class Pace:
    """The configured stream deadlines: a default and per requested model."""

    default: Timeouts
    routes: Mapping[str, Timeouts] = field(default_factory=dict)

    @classmethod
    def of(cls, config: ResilienceConfig) -> Pace | None:
        """None when no deadline is configured anywhere (nothing to do per request)."""
        default = Timeouts(config.ttft_timeout_s, config.stream_idle_timeout_s)
        routes = {name: Timeouts(r.ttft_timeout_s if "ttft_timeout_s" in r.model_fields_set else default.first_token,
                                 r.stream_idle_timeout_s if "stream_idle_timeout_s" in r.model_fields_set
                                 else default.idle)
                  for name, r in config.routes.items()}
        if default == Timeouts() and all(t == Timeouts() for t in routes.values()):
            return None
        return cls(default, routes)

    def of_model(self, model: str | None) -> Timeouts | None:
        found = self.routes.get(model or "", self.default)
        return None if found == Timeouts() else found


async def first_token(opening: Awaitable[Stream], timeouts: Timeouts, *, started: float, where: str) -> Stream:
    """The stream ``opening`` gives, once its first token has arrived (within ``timeouts.first_token`` of
    ``started``, a ``time.monotonic()``), wrapped so that every later chunk is bounded by ``timeouts.idle``.

    Raises :class:`UpstreamTimeoutError` (``first_token_timeout``), the stream closed, when the deadline
    passes first (while the upstream is still to answer, or after its first events); the caller's
    attempt is then a failed one.
    """
    if timeouts.first_token is None:
        opened = await opening
        return Paced(opened, opened.__aiter__(), [], timeouts.idle, where)
    stream: Stream | None = None
    held: list[bytes] = []
    try:
        async with asyncio.timeout(max(started + timeouts.first_token - time.monotonic(), 0.0)):
            stream = await opening
            it = stream.__aiter__()
            while stream.info.first_token is None:
                try:
                    held.append(await anext(it))
                except StopAsyncIteration:  # ended without a token (an empty answer): pass it on
                    break
    except TimeoutError:
        if stream is not None:
            await stream.aclose()
        raise UpstreamTimeoutError(f"{where} sent no token within {timeouts.first_token:g} s "
                                   "(ttft_timeout_s)", code=FIRST_TOKEN_TIMEOUT) from None
    except BaseException:
        if stream is not None:
            await stream.aclose()
        raise
    return Paced(stream, it, held, timeouts.idle, where)


class Paced:
    """A :class:`Stream` that replays the held events, then waits at most ``idle`` s for each chunk."""

    __slots__ = ("_held", "_idle", "_inner", "_it", "_where", "dialect", "info")

    def __init__(self, inner: Stream, it: AsyncIterator[bytes], held: list[bytes], idle: float | None,
                 where: str) -> None:
        self._inner, self._it, self._held, self._idle, self._where = inner, it, held, idle, where
        self.info: StreamInfo = inner.info
        self.dialect: Dialect = inner.dialect

    def __aiter__(self) -> Paced:
        return self

    async def __anext__(self) -> bytes:
        if self._held:
            return self._held.pop(0)
        if self._idle is None:
            return await anext(self._it)
        try:
            async with asyncio.timeout(self._idle):
                return await anext(self._it)
        except TimeoutError:
            raise UpstreamTimeoutError(f"{self._where} sent nothing for {self._idle:g} s in the middle of the "
                                       "stream (stream_idle_timeout_s)", code=STREAM_IDLE_TIMEOUT) from None

    async def aclose(self) -> None:
        await self._inner.aclose()
