"""The adapter for Anthropic's Messages API: OpenAI chat in, Anthropic on the wire.

Requests and whole responses are translated by :mod:`.translate`, streams
event by event by :mod:`.stream`; every byte goes through :class:`HttpPool`,
so transport failures and error statuses (529 overloaded → retryable
:class:`UpstreamStatusError`) become labgate errors in one place.

A call from an Anthropic client (``Call.native``) is passed through: its own
body goes upstream with only ``model`` rewritten, and the upstream's body or
events come back as they are, marked ``dialect="anthropic"``
(:mod:`.passthrough` taps usage and the stop reason on the way).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson

from labgate.errors import (
    UnsupportedEndpointError,
    UpstreamBadResponseError,
    UpstreamConnectionError,
)
from labgate.providers.anthropic.config import DEFAULT_BASE_URL, AnthropicConfig
from labgate.providers.anthropic.passthrough import MessageTap
from labgate.providers.anthropic.stream import StreamTranslator
from labgate.providers.anthropic.translate import (
    chat_request_to_messages,
    finish_reason,
    message_to_chat_completion,
    read_usage,
)
from labgate.providers.base import Call, Dialect, IteratorStream, Reply, StreamInfo
from labgate.providers.http import HttpPool, parse_json

_MESSAGES = "/v1/messages"
_MODELS_PAGE = "/v1/models?limit=1000"
_MAX_MODEL_PAGES = 20


class AnthropicAdapter:
    """Serves OpenAI chat completions, and Anthropic clients untranslated, from a Messages upstream."""

    endpoints = frozenset({"chat", "messages"})

    def __init__(self, config: AnthropicConfig, *, name: str) -> None:
        self.name = name
        self._where = f"provider {name!r}"
        self._default_max_tokens = config.default_max_tokens
        headers = {"anthropic-version": config.anthropic_version, **config.headers}
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if key:
            headers["x-api-key"] = key
        base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        # The paths carry /v1; accept a base URL written the way OpenAI's are, too.
        base_url = base_url.removesuffix("/v1")
        self._http = HttpPool(base_url, name=name, headers=headers,
                              max_connections=config.max_parallel_requests or 0,
                              max_response_bytes=config.max_response_bytes)

    def _body(self, call: Call, *, stream: bool) -> bytes:
        if call.native is not None:
            return orjson.dumps({**call.native, "model": call.model})
        if call.endpoint != "chat":
            raise UnsupportedEndpointError(
                f"{self._where} (anthropic) serves chat completions only, not {call.endpoint}")
        return orjson.dumps(chat_request_to_messages(
            call.body, model=call.model, default_max_tokens=self._default_max_tokens,
            stream=stream))

    async def send(self, call: Call) -> Reply:
        body = self._body(call, stream=False)
        status, headers, data = await self._http.request("POST", _MESSAGES, body,
                                                         timeout=call.timeout, extra_headers=call.headers)
        if status >= 300:
            raise self._http.error_for(status, data, headers)
        message = parse_json(data, self._where)
        if call.native is not None:
            return self._native_reply(message, data)
        completion = message_to_chat_completion(message, created=int(time.time()),
                                                where=self._where)
        usage = read_usage(message.get("usage")) if isinstance(message, dict) else None
        return Reply(body=orjson.dumps(completion), usage=usage,
                     finish_reason=completion["choices"][0]["finish_reason"])

    def _native_reply(self, message: object, data: bytes) -> Reply:
        if not isinstance(message, dict) or message.get("type") != "message":
            raise UpstreamBadResponseError(f"{self._where} sent a body that is not a message")
        return Reply(body=data, usage=read_usage(message.get("usage")),
                     finish_reason=finish_reason(message.get("stop_reason")), dialect="anthropic")

    async def stream(self, call: Call) -> IteratorStream:
        body = self._body(call, stream=True)
        upstream = await self._http.open_stream(_MESSAGES, body, timeout=call.timeout, extra_headers=call.headers)
        chunks = upstream.chunks()
        info = StreamInfo()
        translator: StreamTranslator | MessageTap
        if call.native is not None:
            translator = MessageTap(info, where=self._where, secrets=self._http.secrets)
        else:
            options = call.body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            translator = StreamTranslator(info, include_usage=include_usage, created=int(time.time()),
                                          where=self._where, secrets=self._http.secrets)
        try:
            first = await self._first_output(chunks, translator)
        except BaseException:
            await chunks.aclose()
            raise
        dialect: Dialect = "anthropic" if call.native is not None else "openai"
        return IteratorStream(self._relay(chunks, translator, first), info, dialect, release=chunks.aclose)

    async def _first_output(self, chunks: AsyncIterator[bytes],
                            translator: StreamTranslator | MessageTap) -> bytes:
        """Read until ``message_start`` has arrived and been translated (the stream contract)."""
        out: list[bytes] = []
        async for chunk in chunks:
            out.append(translator.feed(chunk))
            if translator.started:
                return b"".join(out)
        raise UpstreamConnectionError(f"{self._where} closed the stream before its first event")

    async def _relay(self, chunks: AsyncGenerator[bytes, None], translator: StreamTranslator | MessageTap,
                     first: bytes) -> AsyncIterator[bytes]:
        try:
            out = first
            while True:
                if out:
                    yield out
                if translator.done:
                    return
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    raise UpstreamConnectionError(
                        f"{self._where} ended the stream before 'message_stop'") from None
                out = translator.feed(chunk)
        finally:
            await chunks.aclose()

    async def list_models(self, *, timeout: float) -> list[str]:
        """The model ids ``GET /v1/models`` lists, following its pages."""
        ids: list[str] = []
        path = _MODELS_PAGE
        for _ in range(_MAX_MODEL_PAGES):
            page = await self._get_json(path, timeout=timeout)
            items = page.get("data")
            if not isinstance(items, list):
                raise UpstreamBadResponseError(f"{self._where} /v1/models has no 'data' list")
            ids.extend(str(m["id"]) for m in items if isinstance(m, dict) and "id" in m)
            last = page.get("last_id")
            if not page.get("has_more") or not isinstance(last, str):
                break
            path = f"{_MODELS_PAGE}&after_id={quote(last)}"
        return ids

    async def _get_json(self, path: str, *, timeout: float) -> dict[str, Any]:
        status, headers, data = await self._http.request("GET", path, timeout=timeout)
        if status >= 300:
            raise self._http.error_for(status, data, headers)
        parsed = parse_json(data, self._where)
        if not isinstance(parsed, dict):
            raise UpstreamBadResponseError(f"{self._where} {path} is not a JSON object")
        return parsed

    async def aclose(self) -> None:
        await self._http.aclose()
