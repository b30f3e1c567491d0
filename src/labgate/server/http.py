"""A lean HTTP/1.1 server on asyncio protocols and httptools.

(Being written: see the module's spec in the task description.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Request:
    """One parsed HTTP request, independent of the server that read it."""

    method: str
    path: str  # without the query string, percent-decoding not applied
    query: str  # raw query string, "" if none
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    client: str | None = None  # peer IP address


@dataclass(slots=True)
class Response:
    """What a handler returns: a whole body, or a stream of body chunks."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[Request], Awaitable[Response]]
