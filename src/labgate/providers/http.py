"""Pooled keep-alive HTTP to upstreams: the one place aiohttp exceptions become ours.

Every adapter talks to its upstream through an :class:`HttpPool`. Foreign
exceptions (aiohttp, OSError, asyncio timeouts) are translated here and
nowhere else, as httpx does in ``map_httpcore_exceptions``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import orjson

from labgate.errors import (
    LabgateError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamRateLimitError,
    UpstreamRejectedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)


@contextmanager
def translate_errors(where: str) -> Iterator[None]:
    """Turn transport exceptions into our upstream errors, naming ``where``."""
    try:
        yield
    except LabgateError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeoutError(f"{where} timed out") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamConnectionError(f"{where} cut the response short ({exc})") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise UpstreamConnectionError(f"{where} closed the connection") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectionError(f"cannot connect to {where} ({exc.os_error or exc})") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamConnectionError(f"{where} connection failed ({type(exc).__name__}: {exc})") from exc


def error_for_status(status: int, body: bytes, headers: Mapping[str, str], where: str) -> LabgateError:
    """The error an upstream's non-2xx answer stands for (both dialects carry ``error.message``)."""
    message = _error_message(body)
    text = f"{where} answered {status}: {message}"
    if status == 429:
        return UpstreamRateLimitError(text, retry_after=_retry_after(headers))
    if status == 408:
        return UpstreamTimeoutError(text)
    if status >= 500:
        return UpstreamStatusError(text, upstream_status=status)
    return UpstreamRejectedError(text, status=status, param=_error_param(body))


def _error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        snippet = body[:200].decode("utf-8", "replace").strip()
        return snippet or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    return str(data)[:200]


def _error_param(body: bytes) -> str | None:
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_json(body: bytes, where: str) -> object:
    """Decode an upstream JSON body, or say clearly that it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        snippet = body[:80].decode("utf-8", "replace")
        raise UpstreamBadResponseError(f"{where} sent a body that is not JSON: {snippet!r}") from exc


@dataclass(slots=True)
class UpstreamStream:
    """An open streaming response: status is 2xx; iterate the raw bytes."""

    response: aiohttp.ClientResponse
    where: str
    idle_timeout: float

    async def chunks(self) -> AsyncIterator[bytes]:
        """The raw body as it arrives; transport failures become upstream errors."""
        content = self.response.content
        try:
            while True:
                with translate_errors(self.where):
                    chunk = await asyncio.wait_for(content.readany(), self.idle_timeout)
                if not chunk:
                    return
                yield chunk
        finally:
            self.response.release()

    def close(self) -> None:
        self.response.close()


class HttpPool:
    """A keep-alive connection pool to one upstream base URL."""

    def __init__(self, base_url: str, *, name: str, headers: Mapping[str, str],
                 max_connections: int = 0) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self._headers = {"content-type": "application/json", **headers}
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a session binds to the running loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                             ttl_dns_cache=300, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, skip_auto_headers=("User-Agent",),
                auto_decompress=True, json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def request(self, method: str, path: str, body: bytes | None = None, *,
                      timeout: float) -> tuple[int, Mapping[str, str], bytes]:
        """One whole request; returns status, headers and body. Raises only our errors."""
        where = f"provider {self.name!r}"
        with translate_errors(where):
            async with asyncio.timeout(timeout):
                async with self._client().request(method, self.base_url + path, data=body) as resp:
                    data = await resp.read()
                    return resp.status, resp.headers, data

    async def open_stream(self, path: str, body: bytes, *, timeout: float) -> UpstreamStream:
        """POST and wait for a 2xx status line; non-2xx raises the matching upstream error."""
        where = f"provider {self.name!r}"
        with translate_errors(where):
            async with asyncio.timeout(timeout):
                resp = await self._client().post(self.base_url + path, data=body)
                if resp.status >= 300:
                    try:
                        data = await resp.read()
                    finally:
                        resp.release()
                    raise error_for_status(resp.status, data, resp.headers, where)
        return UpstreamStream(resp, where, timeout)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
