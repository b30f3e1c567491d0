"""The small adapter protocol every provider type implements.

An adapter turns one OpenAI-dialect call into a request to its upstream and
the upstream's answer back into OpenAI-dialect bytes. It raises only
:mod:`labgate.errors` exceptions.

A call from a client of another dialect (Anthropic's ``/v1/messages``) also
carries that client's own body in :attr:`Call.native`. An adapter that
speaks the client's dialect sends it instead (only ``model`` rewritten) and
marks its answer with that ``dialect``, so bytes pass through untranslated;
every other adapter ignores it. Optional abilities (listing models) are
separate protocols, checked with ``isinstance`` where they are used.

Contract for :meth:`Adapter.stream`: it returns only once the upstream has
accepted the request *and* its first event has arrived and been checked, so
that every failure before the first byte reaches the client can still fall
back to another deployment. Failures after that are raised from the
iterator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

# "messages": an Anthropic Messages request that the OpenAI dialect cannot carry
# (server tools, documents, ...), so only adapters that speak Anthropic serve it.
Endpoint = Literal["chat", "completions", "embeddings", "messages"]
ALL_ENDPOINTS: frozenset[str] = frozenset({"chat", "completions", "embeddings"})
Dialect = Literal["openai", "anthropic"]


class Call(NamedTuple):
    """One attempt's request, in the OpenAI dialect (immutable: a named tuple, built per attempt
    without the per-field ``object.__setattr__`` calls a frozen dataclass makes).

    ``body`` is the client's parsed JSON; adapters must not mutate it (a
    fallback attempt reuses it). ``model`` is the upstream's name for the
    model. ``timeout`` is what this attempt may spend, already bounded by
    the request's total deadline. ``native`` is the client's Anthropic
    Messages body when the client spoke Anthropic (``body`` is then its
    OpenAI translation); it is not mutated either. ``headers`` are header
    lines to add to this attempt's request (``traceparent`` when traced).
    """

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    timeout: float
    request_id: str
    native: dict[str, Any] | None = None
    headers: bytes = b""  # extra header lines for this attempt (the W3C trace context), each ending CRLF


@dataclass(frozen=True, slots=True)
class Translated:
    """What a surface for another dialect parses a request into.

    ``body`` is the OpenAI-dialect translation (routing reads ``model`` and
    ``stream`` from it); ``native`` is the client's own body, for adapters
    that speak its dialect; ``endpoint`` is ``"messages"`` when ``body``
    could not carry the request's whole meaning.
    """

    body: dict[str, Any]
    native: dict[str, Any]
    endpoint: Endpoint = "chat"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0  # every input token, cached ones included (OpenAI's convention)
    completion_tokens: int = 0  # every output token, reasoning ones included
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it (Anthropic's cache_creation_input_tokens)
    reasoning_tokens: int = 0  # of completion_tokens: reasoning (OpenAI's completion_tokens_details)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Reply:
    """A complete (non-stream) answer: JSON bytes in ``dialect`` plus what we tapped.

    ``finish_reason`` is always in OpenAI's vocabulary, whatever the dialect.
    """

    body: bytes
    usage: Usage | None = None
    finish_reason: str | None = None
    dialect: Dialect = "openai"


@dataclass(slots=True)
class StreamInfo:
    """What a stream's side tap learned; filled in while the stream is read."""

    usage: Usage | None = None
    finish_reason: str | None = None
    chunks: int = 0
    first_token: float | None = None  # perf_counter() when the first content (not the role chunk) passed


class Stream(Protocol):
    """SSE bytes in ``dialect``: OpenAI's (``data: {...}\\n\\n`` … ``data: [DONE]\\n\\n``) or Anthropic's."""

    info: StreamInfo
    dialect: Dialect

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
    dialect: Dialect = "openai"
    # Frees what the iterator holds. An async generator that was never started does not
    # run its ``finally`` on aclose(), so resources opened before it must be released here.
    release: Callable[[], Awaitable[None]] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iterator

    async def aclose(self) -> None:
        aclose = getattr(self.iterator, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            release, self.release = self.release, None
            if release is not None:
                await release()
