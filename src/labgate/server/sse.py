"""Relaying a stream to a client: a failure after it started becomes one SSE error event."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable

from labgate.errors import InternalError, LabgateError

log = logging.getLogger("labgate.server")


class ErrorEventStream:
    """Yields the inner stream's chunks; an error ends it with one event rendered by ``render``.

    A class, so that ``aclose()`` reaches the inner stream even when no chunk was ever pulled
    (an async generator that never started would skip its cleanup).
    """

    __slots__ = ("_done", "_inner", "_it", "_render", "_request_id")

    def __init__(self, inner: AsyncIterable[bytes], render: Callable[[LabgateError, str], bytes],
                 request_id: str) -> None:
        self._inner, self._render, self._request_id = inner, render, request_id
        self._it = inner.__aiter__()
        self._done = False

    def __aiter__(self) -> ErrorEventStream:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            return await self._it.__anext__()
        except StopAsyncIteration:
            self._done = True
            raise
        except LabgateError as exc:
            self._done = True
            return self._render(exc, self._request_id)
        except Exception:
            self._done = True
            log.exception("unexpected error in a stream (request %s)", self._request_id)
            return self._render(InternalError("unexpected error in a stream"), self._request_id)

    async def aclose(self) -> None:
        self._done = True
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()
