"""The small adapter protocol every provider type implements.

An adapter turns one OpenAI-dialect call into a request to its upstream and
the upstream's answer back into OpenAI-dialect bytes. It raises only
:mod:`labgate.errors` exceptions. Optional abilities (listing models) are
separate protocols, checked with ``isinstance`` where they are used.

Contract for :meth:`Adapter.stream`: it returns only once the upstream has
accepted the request *and* its first event has arrived and been checked, so
that every failure before the first byte reaches the client can still fall
back to another deployment. Failures after that are raised from the
iterator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Endpoint = Literal["chat", "completions", "embeddings"]
ALL_ENDPOINTS: frozenset[str] = frozenset({"chat", "completions", "embeddings"})


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt's request, in the OpenAI dialect.

    ``body`` is the client's parsed JSON; adapters must not mutate it (a
    fallback attempt reuses it). ``model`` is the upstream's name for the
    model. ``timeout`` is what this attempt may spend, already bounded by
    the request's total deadline.
    """

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    timeout: float
    request_id: str


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Reply:
    """A complete (non-stream) answer: OpenAI-dialect JSON bytes plus what we tapped."""

    body: bytes
    usage: Usage | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class StreamInfo:
    """What a stream's side tap learned; filled in while the stream is read."""

    usage: Usage | None = None
    finish_reason: str | None = None
    chunks: int = 0
    first_token: float | None = None  # perf_counter() when the first content (not the role chunk) passed


class Stream(Protocol):
    """OpenAI SSE bytes (``data: {...}\\n\\n`` … ``data: [DONE]\\n\\n``)."""

    info: StreamInfo

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Adapter(Protocol):
    """What the attempt loop needs from a provider type."""

    endpoints: frozenset[str]

    async def send(self, call: Call) -> Reply: ...

    async def stream(self, call: Call) -> Stream: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ModelLister(Protocol):
    """Optional: the adapter can ask its engine which models it serves."""

    async def list_models(self, *, timeout: float) -> list[str]: ...


@dataclass(slots=True)
class IteratorStream:
    """A :class:`Stream` over an async generator, with its tap info."""

    iterator: AsyncIterator[bytes]
    info: StreamInfo = field(default_factory=StreamInfo)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iterator

    async def aclose(self) -> None:
        aclose = getattr(self.iterator, "aclose", None)
        if aclose is not None:
            await aclose()
