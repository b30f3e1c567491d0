"""The adapter for every engine that speaks OpenAI's HTTP API.

Same dialect on both sides, so bodies pass through with only ``model``
rewritten and the engine's quirks applied; stream bytes are forwarded event
by event while a side tap reads usage and the finish reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from labgate.errors import (
    LabgateError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
    UpstreamRejectedError,
    UpstreamStatusError,
)
from labgate.providers.base import Call, IteratorStream, Reply, StreamInfo, Usage
from labgate.providers.http import HttpPool, parse_json, upstream_snippet
from labgate.providers.openai_compat.config import OpenAICompatibleConfig
from labgate.providers.openai_compat.quirks import PRESETS, Quirks, adapt_body
from labgate.providers.sse import SSEBuffer, event_fields

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
_DONE = b"[DONE]"


def api_root(base_url: str) -> str:
    """``http://h:p`` → ``http://h:p/v1``; a URL that already has a path is kept as given."""
    base = base_url.rstrip("/")
    scheme_end = base.find("://") + 3
    return base if "/" in base[scheme_end:] else base + "/v1"


class OpenAICompatibleAdapter:
    """OpenAI, vLLM, llama.cpp, Ollama (/v1), LM Studio and any compatible service."""

    def __init__(self, config: OpenAICompatibleConfig, *, name: str) -> None:
        preset = PRESETS[config.type]
        if config.quirks is not None:
            preset = preset.merged(rename=config.quirks.rename, drop=frozenset(config.quirks.drop))
        self.quirks: Quirks = preset
        self.endpoints = preset.endpoints
        self.name = name
        base_url = config.base_url or preset.default_base_url
        if base_url is None:
            raise ValueError(f"provider {name!r}: base_url is required for type {config.type}")
        headers = dict(config.headers)
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._where = f"provider {name!r}"
        self._http = HttpPool(api_root(base_url), name=name, headers=headers,
                              max_connections=config.max_parallel_requests or 0,
                              max_response_bytes=config.max_response_bytes)

    async def send(self, call: Call) -> Reply:
        body = adapt_body(call.body, model=call.model, quirks=self.quirks)
        status, headers, data = await self._http.request(
            "POST", _PATHS[call.endpoint], orjson.dumps(body), timeout=call.timeout, extra_headers=call.headers)
        if status >= 300:
            raise self._refine(self._http.error_for(status, data, headers))
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = parse_json(data, self._where)  # raises, saying it is not JSON
        expected = "data" if call.endpoint == "embeddings" else "choices"
        if not isinstance(parsed, dict) or not isinstance(parsed.get(expected), list):
            raise UpstreamBadResponseError(f"{self._where} sent JSON without a {expected!r} list")
        return Reply(body=data, usage=_usage(parsed.get("usage")), finish_reason=_finish(parsed))

    async def stream(self, call: Call) -> IteratorStream:
        body = adapt_body(call.body, model=call.model, quirks=self.quirks)
        options = body.get("stream_options")
        client_wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        if self.quirks.stream_usage and not client_wants_usage and call.endpoint != "embeddings":
            body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                      "include_usage": True}
        try:
            upstream = await self._http.open_stream(_PATHS[call.endpoint], orjson.dumps(body),
                                                    timeout=call.timeout, extra_headers=call.headers)
        except UpstreamStatusError as exc:
            raise self._refine(exc) from exc
        chunks = upstream.chunks()
        info = StreamInfo()
        try:
            first = await self._first_events(chunks)
        except BaseException:
            await chunks.aclose()
            raise
        relay = self._relay(chunks, first, info, strip_usage=not client_wants_usage)
        return IteratorStream(relay, info, release=chunks.aclose)

    async def _first_events(self, chunks: AsyncIterator[bytes]) -> tuple[SSEBuffer, list[bytes]]:
        """Read until one whole event has arrived and check that it is JSON (or [DONE])."""
        buffer = SSEBuffer()
        async for chunk in chunks:
            events = buffer.feed(chunk)
            if events:
                _, data = event_fields(events[0])
                if data != _DONE:
                    try:
                        orjson.loads(data)
                    except orjson.JSONDecodeError as exc:
                        raise UpstreamBadResponseError(
                            f"{self._where} sent a stream event that is not JSON: {upstream_snippet(data)}") from exc
                return buffer, events
        raise UpstreamConnectionError(f"{self._where} closed the stream before its first event")

    async def _relay(self, chunks: AsyncGenerator[bytes, None], first: tuple[SSEBuffer, list[bytes]],
                     info: StreamInfo, *, strip_usage: bool) -> AsyncIterator[bytes]:
        buffer, events = first
        done = False
        try:
            while True:
                out, done = self._tap(events, info, strip_usage=strip_usage)
                if out:
                    yield out
                if done:
                    return
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    raise UpstreamConnectionError(
                        f"{self._where} ended the stream before [DONE]") from None
                events = buffer.feed(chunk)
        finally:
            await chunks.aclose()

    @staticmethod
    def _tap(events: list[bytes], info: StreamInfo, *, strip_usage: bool) -> tuple[bytes, bool]:
        """The bytes to forward for these events; reads usage and finish reason on the side."""
        kept: list[bytes] = []
        done = False
        for event in events:
            if not event.strip():
                continue
            if (b'"usage":{' in event or b'"finish_reason":"' in event
                    or b'"usage": {' in event or b'"finish_reason": "' in event):
                _, data = event_fields(event)
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict):
                    info.usage = _usage(parsed.get("usage")) or info.usage
                    info.finish_reason = _finish(parsed) or info.finish_reason
                    if strip_usage and parsed.get("choices") == [] and "usage" in parsed:
                        continue
            elif event.endswith(_DONE) and event_fields(event)[1] == _DONE:
                done = True
            if info.first_token is None and not done and not _role_only(event):
                info.first_token = time.perf_counter()
            info.chunks += 1
            kept.append(event)
        if not kept:
            return b"", done
        kept.append(b"")
        return b"\n\n".join(kept), done

    def _refine(self, exc: LabgateError) -> LabgateError:
        """A 5xx the engine uses for a client problem becomes the rejection it is."""
        if isinstance(exc, UpstreamStatusError) and any(r in exc.message for r in self.quirks.rejects):
            return UpstreamRejectedError(exc.message, status=400)
        return exc

    async def list_models(self, *, timeout: float) -> list[str]:
        status, headers, data = await self._http.request("GET", "/models", timeout=timeout)
        if status >= 300:
            raise self._http.error_for(status, data, headers)
        parsed = parse_json(data, self._where)
        items = parsed.get("data") if isinstance(parsed, dict) else None
        if not isinstance(items, list):
            raise UpstreamBadResponseError(f"{self._where} /models has no 'data' list")
        return [str(m["id"]) for m in items if isinstance(m, dict) and "id" in m]

    async def aclose(self) -> None:
        await self._http.aclose()


def _role_only(event: bytes) -> bool:
    """The opening chunk that carries the role and no content yet."""
    return b'"role"' in event and (b'"content":""' in event or b'"content":null' in event
                                   or b'"content": ""' in event or b'"content": null' in event)


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens_details"), value.get("completion_tokens_details")
    return Usage(prompt_tokens=int(value.get("prompt_tokens") or 0),
                 completion_tokens=int(value.get("completion_tokens") or 0),
                 cached_tokens=_count(prompt, "cached_tokens") if prompt else 0,  # details are often absent
                 reasoning_tokens=_count(completion, "reasoning_tokens") if completion else 0)


def _count(details: Any, name: str) -> int:
    """A token count inside ``*_tokens_details``; anything but a non-negative integer reads as 0."""
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _finish(parsed: dict[str, Any]) -> str | None:
    choices = parsed.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                return str(choice["finish_reason"])
    return None
