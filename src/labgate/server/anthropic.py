"""The Anthropic-compatible surface: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A request is checked the way Anthropic checks it (400s worded like
Anthropic's, ``path: problem``), translated to the OpenAI dialect for routing
and OpenAI-dialect deployments, and handed to the gateway together with the
client's own body. An answer from an OpenAI-dialect deployment is translated
back; one from an ``anthropic`` deployment is relayed as it came. Errors use
Anthropic's envelope (:func:`anthropic_error`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import orjson

from labgate.auth import presented_key
from labgate.errors import (
    InternalError,
    InvalidJSONError,
    LabgateError,
    RequestError,
    UnsupportedEndpointError,
    UpstreamBadResponseError,
)
from labgate.gateway import Gateway
from labgate.providers.anthropic.inbound import (
    chat_completion_to_message,
    estimate_input_tokens,
    messages_to_chat_request,
)
from labgate.providers.anthropic.inbound_stream import PING, EventTranslator
from labgate.providers.base import Reply, Stream, Translated
from labgate.record import RequestRecord
from labgate.server.envelopes import JSON, anthropic_error, anthropic_sse_error
from labgate.server.fields import is_int, is_number, model_problem
from labgate.server.http import Request, Response
from labgate.server.ids import request_id
from labgate.server.openai import SSE_HEADERS, new_record, route_headers
from labgate.server.sse import ErrorEventStream

log = logging.getLogger("labgate.server")
PING_INTERVAL_S = 10.0  # a translated stream silent this long gets a ping (proxies drop idle streams)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})

# ---------------------------------------------------------------- request checks


def _fail(path: str, problem: str) -> NoReturn:
    raise RequestError(f"{path}: {problem}", param=path)


# key → (check, what Anthropic says when it fails). Only keys present in a body are looked at.
_SCALARS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stream": (lambda v: isinstance(v, bool), "Input should be a valid boolean"),
    "temperature": (lambda v: is_number(v) and 0 <= v <= 1, "Input should be a number between 0 and 1"),
    "top_p": (lambda v: is_number(v) and 0 <= v <= 1, "Input should be a number between 0 and 1"),
    "top_k": (lambda v: is_int(v) and v >= 0, "Input should be a non-negative integer"),
    "stop_sequences": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
                       "Input should be a valid list of strings"),
    "metadata": (lambda v: isinstance(v, dict) and isinstance(v.get("user_id"), (str, type(None))),
                 "Input should be an object whose 'user_id' is a string"),
    "system": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str) for b in v)),
        "Input should be a valid string or a list of text blocks"),
    "tools": (lambda v: isinstance(v, list), "Input should be a valid list"),
    "tool_choice": (lambda v: isinstance(v, dict), "Input should be a valid dictionary"),
    "thinking": (lambda v: isinstance(v, dict), "Input should be a valid dictionary"),
    "output_config": (lambda v: isinstance(v, dict), "Input should be a valid dictionary"),
}


def check_request(payload: dict[str, Any], *, needs_max_tokens: bool = True) -> None:
    """Raise the :class:`RequestError` Anthropic would answer for a malformed Messages body."""
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        _fail("model", "Field required" if model is None else "Input should be a non-empty string")
    problem = model_problem(model)
    if problem is not None:
        _fail("model", f"Input {problem}")
    max_tokens = payload.get("max_tokens")
    if needs_max_tokens or max_tokens is not None:
        if max_tokens is None:
            _fail("max_tokens", "Field required")
        if not is_int(max_tokens) or max_tokens < 1:
            _fail("max_tokens", "Input should be an integer greater than or equal to 1")
    for key in payload:  # in body order, so the reported problem is stable
        rule = _SCALARS.get(key)
        if rule is not None and payload[key] is not None and not rule[0](payload[key]):
            _fail(key, rule[1])
    messages = payload.get("messages")
    if messages is None:
        _fail("messages", "Field required")
    if not isinstance(messages, list) or not messages:
        _fail("messages", "Input should be a non-empty list of messages")
    for i, message in enumerate(messages):
        _check_message(message, f"messages.{i}")
    for i, tool in enumerate(payload.get("tools") or ()):
        _check_tool(tool, f"tools.{i}")
    if payload.get("tool_choice") is not None:
        _check_tool_choice(payload["tool_choice"])
    config = payload.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        _check_output_format(config["format"], "output_config.format")
    if payload.get("output_format") is not None:
        _check_output_format(payload["output_format"], "output_format")


def _check_message(message: Any, path: str) -> None:
    if not isinstance(message, dict):
        _fail(path, "Input should be a valid dictionary")
    role = message.get("role")
    if role not in ("user", "assistant"):
        _fail(f"{path}.role", "Input should be 'user' or 'assistant'")
    content = message.get("content")
    if content is None:
        _fail(f"{path}.content", "Field required")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        _fail(f"{path}.content", "Input should be a valid string or list of content blocks")
    for j, block in enumerate(content):
        where = f"{path}.content.{j}"
        _check_block(block, where)
        kind = block["type"]
        if kind == "tool_use" and role != "assistant":
            _fail(f"{where}.type", "'tool_use' blocks are only allowed in assistant messages")
        if kind == "tool_result":
            if role != "user":
                _fail(f"{where}.type", "'tool_result' blocks are only allowed in user messages")
            _check_tool_result(block, where)


def _check_block(block: Any, path: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        _fail(f"{path}.type", "Field required: each content block is an object with a 'type'")
    kind = block["type"]
    if kind == "text" and not isinstance(block.get("text"), str):
        _fail(f"{path}.text", "Field required: a string")
    elif kind == "image":
        _check_image_source(block.get("source"), f"{path}.source")
    elif kind == "tool_use":
        for key in ("id", "name"):
            if not isinstance(block.get(key), str) or not block[key]:
                _fail(f"{path}.{key}", "Field required: a non-empty string")
        if not isinstance(block.get("input"), dict):
            _fail(f"{path}.input", "Input should be a valid dictionary")


def _check_image_source(source: Any, path: str) -> None:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        if source.get("media_type") not in _IMAGE_TYPES:
            _fail(f"{path}.media_type", f"Input should be one of {', '.join(sorted(_IMAGE_TYPES))}")
        if not isinstance(source.get("data"), str):
            _fail(f"{path}.data", "Field required: a base64 string")
    elif kind == "url":
        if not isinstance(source.get("url"), str):
            _fail(f"{path}.url", "Field required: a string")
    elif not isinstance(kind, str):
        _fail(f"{path}.type", "Field required: 'base64' or 'url'")


def _check_tool_result(block: dict[str, Any], path: str) -> None:
    if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
        _fail(f"{path}.tool_use_id", "Field required: a non-empty string")
    if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
        _fail(f"{path}.is_error", "Input should be a valid boolean")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        _fail(f"{path}.content", "Input should be a valid string or list of content blocks")
    for k, item in enumerate(content):
        _check_block(item, f"{path}.content.{k}")


def _check_tool(tool: Any, path: str) -> None:
    if not isinstance(tool, dict):
        _fail(path, "Input should be a valid dictionary")
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        _fail(f"{path}.name", "Field required: a non-empty string")
    if tool.get("type") in (None, "custom"):
        if not isinstance(tool.get("input_schema"), dict):
            _fail(f"{path}.input_schema", "Field required: a JSON schema object")
        if tool.get("description") is not None and not isinstance(tool["description"], str):
            _fail(f"{path}.description", "Input should be a valid string")
    elif not isinstance(tool["type"], str):
        _fail(f"{path}.type", "Input should be a valid string")


def _check_output_format(fmt: Any, path: str) -> None:
    """Structured output: ``{"type": "json_schema", "schema": {...}}``, the only format Anthropic has."""
    if not isinstance(fmt, dict):
        _fail(path, "Input should be a valid dictionary")
    if fmt.get("type") != "json_schema":
        _fail(f"{path}.type", "Input should be 'json_schema'")
    if not isinstance(fmt.get("schema"), dict):
        _fail(f"{path}.schema", "Field required: a JSON schema object")


def _check_tool_choice(choice: dict[str, Any]) -> None:
    if choice.get("type") not in _TOOL_CHOICES:
        _fail("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    if choice["type"] == "tool" and (not isinstance(choice.get("name"), str) or not choice["name"]):
        _fail("tool_choice.name", "Field required: the tool's name")
    flag = choice.get("disable_parallel_tool_use")
    if flag is not None and not isinstance(flag, bool):
        _fail("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")


def _object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSONError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidJSONError("The request body must be a JSON object.")
    return payload


def parse_messages(body: bytes) -> Translated:
    """Check a Messages body and translate it; the gateway routes on the OpenAI side of it."""
    payload = _object(body)
    check_request(payload)
    translated, native_only = messages_to_chat_request(payload)
    return Translated(translated, payload, "messages" if native_only else "chat")


# ---------------------------------------------------------------- the surface


class AnthropicSurface:
    """Handlers for ``/v1/messages`` and ``/v1/messages/count_tokens``."""

    def __init__(self, gateway: Gateway, *, ping_interval: float = PING_INTERVAL_S) -> None:
        self.gateway = gateway
        self.ping_interval = ping_interval

    async def messages(self, request: Request) -> Response:
        record = new_record(request, "messages", self.gateway)
        try:
            result = await self.gateway.handle(record, api_key=presented_key(request.headers),
                                               body=request.body, parse=parse_messages, answer=_as_message)
            headers = route_headers(record)
            headers.append(("request-id", record.request_id))
            if isinstance(result, Reply):
                headers.append(JSON)
                return Response(200, headers, result.body)
        except LabgateError as exc:
            return anthropic_error(_explained(exc, request.body), record.request_id, route_headers(record)[1:])
        except Exception:
            log.exception("unexpected error serving messages (request %s)", record.request_id)
            return anthropic_error(InternalError("The gateway hit an internal error; it has been logged."),
                                   record.request_id)
        # an Anthropic upstream's events go as they came; an OpenAI-dialect one's are translated
        events = result if result.dialect == "anthropic" else EventStream(
            result, where=f"provider {record.provider!r}", ping_interval=self.ping_interval)
        headers.extend(SSE_HEADERS)
        return Response(200, headers, stream=ErrorEventStream(events, anthropic_sse_error,
                                                              record.request_id))

    async def count_tokens(self, request: Request) -> Response:
        """An estimate of the request's input tokens (:func:`estimate_input_tokens` says how)."""
        rid = request_id(request.headers)
        rt = self.gateway.runtime
        try:
            rt.auth.admit(presented_key(request.headers))
            payload = _object(request.body)
            check_request(payload, needs_max_tokens=False)
            rt.table.resolve(payload["model"])
        except LabgateError as exc:
            return anthropic_error(exc, rid)
        body = orjson.dumps({"input_tokens": estimate_input_tokens(payload)})
        return Response(200, [JSON, ("x-request-id", rid), ("request-id", rid)], body)


def _as_message(reply: Reply, record: RequestRecord) -> Reply:
    """A whole reply as a Messages response (the gateway calls this before the record closes)."""
    if reply.dialect == "anthropic":
        return reply
    where = f"provider {record.provider!r}"
    try:
        completion = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponseError(f"{where} sent a chat completion that is not JSON") from None
    body = orjson.dumps(chat_completion_to_message(completion, where=where))
    return Reply(body, reply.usage, reply.finish_reason, "anthropic")


def _explained(exc: LabgateError, body: bytes) -> LabgateError:
    """Name the Anthropic-only features when no deployment could take a native-only request."""
    if not isinstance(exc, UnsupportedEndpointError):
        return exc
    _, native_only = messages_to_chat_request(orjson.loads(body))
    if native_only is None:
        return exc
    return UnsupportedEndpointError(
        f"This request uses {native_only}, which only an 'anthropic' provider can serve, and no "
        f"deployment of this model is one ({exc.message}).")


async def _next(iterator: AsyncIterator[bytes]) -> bytes | None:
    return await anext(iterator, None)


class EventStream:
    """An OpenAI-dialect stream as Anthropic events, with a ``ping`` whenever it goes quiet.

    The next upstream chunk is awaited in its own task, so a ping never
    cancels the read it interrupts. A class rather than an async generator:
    ``aclose()`` must reach the stream underneath even when no event was
    ever pulled (the relay then records the request and frees its slot).
    """

    __slots__ = ("_done", "_interval", "_it", "_pending", "_stream", "_translator")

    def __init__(self, stream: Stream, *, where: str, ping_interval: float) -> None:
        self._stream = stream
        self._it = aiter(stream)
        self._translator = EventTranslator(where=where)
        self._interval = ping_interval
        self._pending: asyncio.Future[bytes | None] | None = None
        self._done = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            if self._pending is None:
                self._pending = asyncio.ensure_future(_next(self._it))
            done, _ = await asyncio.wait((self._pending,), timeout=self._interval)
            if not done:
                return PING
            pending, self._pending = self._pending, None
            chunk = pending.result()
            if chunk is None:
                break
            out = self._translator.feed(chunk)
            if out:
                return out
        self._done = True
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._done = True
        pending, self._pending = self._pending, None
        if pending is not None:
            if not pending.done():
                pending.cancel()
                await asyncio.wait((pending,))
            if not pending.cancelled():
                pending.exception()  # retrieved: nobody is left to read it
        await self._stream.aclose()
