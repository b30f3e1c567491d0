"""What the HTTP server hands a handler and what it takes back: independent of the server's internals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from labgate.errors import LabgateError


@dataclass(slots=True)
class Request:
    """One parsed HTTP request, independent of the server that read it."""

    method: str
    path: str  # without the query string, percent-decoding not applied
    query: str  # raw query string, "" if none
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "; never trailer fields
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
# Renders the server's own errors; gets the request's headers as far as they were read.
ErrorResponder = Callable[[LabgateError, Mapping[str, str]], Response]
