"""Request framing: the rules llhttp's callbacks (via httptools) apply to turn bytes into ``Request`` objects.

llhttp finds the message boundaries; the callbacks, methods of ``server/connection.py``'s ``Connection``
(one Python frame fewer per read and per request than a separate reader object), enforce the rest,
with the helpers here:

- sizes: the request line and header fields (``max_header_bytes``, 431), trailer fields counted
  against the same budget and never merged into the request's headers; a line still being received
  counts too (httptools buffers it before we see it); the body (``max_body_bytes``, 413), read into
  one buffer whatever its chunking (a list of small pieces costs far more than the bytes);
- RFC 9112: a ``Host`` header on HTTP/1.1, exactly one (400); only HTTP/1.0 and 1.1 (505); only the
  ``chunked`` transfer coding (501 for others; 400 for a repeated ``chunked``); an HTTP/1.0 message
  with ``Transfer-Encoding`` is the connection's last (§6.1), as is one that asked for ``close``, an
  upgrade (not supported: answered, then closed); a ``Content-Length`` too long to be a length: 400.

Per request this costs one ``dict`` for the headers and, only when the body arrives in more than one
piece, one ``bytearray``.
"""

from __future__ import annotations

import httptools

from labgate.errors import HeaderTooLargeError, RequestError, UnsupportedFramingError

METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
MAX_LENGTH_DIGITS = 19  # a Content-Length longer than this is not a length any body here can have


class AfterLast(Exception):
    """A request began after the connection's last one: parse no further."""


def check_codings(value: str) -> None:
    """Only ``chunked``, once and last, is a transfer coding we read (RFC 9112 §6.1, §6.3)."""
    codings = [c.strip().lower() for c in value.split(",") if c.strip()]
    if codings[-1:] != ["chunked"]:
        raise RequestError("The request's last transfer coding is not chunked: its length is unknown.")
    if codings.count("chunked") > 1:
        raise RequestError("The chunked transfer coding is applied more than once.")
    unknown = ", ".join(repr(c[:40]) for c in codings[:-1][:3])
    if unknown:
        raise UnsupportedFramingError(f"Transfer coding {unknown} is not supported; send the body "
                                      "with Content-Length or chunked alone.")


def split_target(url: bytes) -> tuple[str, str]:
    """Path and raw query of a request target (origin form, absolute form or ``*``)."""
    if url[:1] != b"/" and url != b"*":
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise RequestError(f"Malformed request target {url[:200]!r}.") from None
        return (parsed.path or b"/").decode("latin-1"), (parsed.query or b"").decode("latin-1")
    path, _, query = url.partition(b"?")
    return path.decode("latin-1"), query.decode("latin-1")


def header_too_large() -> HeaderTooLargeError:
    return HeaderTooLargeError("The request's header section is too large.")
