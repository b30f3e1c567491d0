"""A finished :class:`RequestRecord` → one ``requests`` row, as much as the capture mode allows.

Runs in the history writer, off the hot path: the request path only kept
references (the parsed body, the reply bytes or the relayed stream chunks);
here they are serialised, and the answer's text and tool calls are pulled
out of OpenAI (or Anthropic) JSON or SSE.

``full`` keeps messages, parameters, response text, tool calls and the
normalised prompt. ``metadata`` keeps everything else: numbers and flags
among the parameters, but no text a user or a model wrote.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from labgate.record import RequestRecord, span_ms
from labgate.store.base import Row

log = logging.getLogger("labgate.store")

# The body key holding the input, per endpoint ("messages": the Anthropic surface).
INPUT_KEYS = {"chat": "messages", "completions": "prompt", "embeddings": "input", "messages": "messages"}
_NOT_PARAMETERS = frozenset({"model", "messages", "prompt", "input", "stream"})
_CONTENT = frozenset({"messages", "prompt", "input", "system", "tools", "functions"})  # left behind without "full"
_METADATA_STRINGS = frozenset({"reasoning_effort", "service_tier", "encoding_format"})
PROMPT_CHARS = 500


def build_row(record: RequestRecord, *, capture: str, client_ip: bool) -> Row:
    """The row for one record; never raises (unreadable content is left out and logged)."""
    # in process: the parsed body as it is (row_from_wire keeps no content unless capture is full)
    return row_from_wire(wire(record, keep_content=True), capture=capture, client_ip=client_ip)


# What a record becomes on the request path (see ``wire``): ~0.5 µs, builtins only.
Wire = tuple[Any, ...]


def wire(record: RequestRecord, *, keep_content: bool) -> Wire:
    """The record as plain builtins: what the writer needs, in a tuple ``marshal`` carries in one call.

    Runs on the request path (the writer may be another process), so it only
    gathers references: no serialising. Without ``keep_content`` the input,
    the reply and the stream's chunks are left behind.
    """
    usage, failures, payload, body = record.usage, record.failures, record.payload, None
    if not keep_content and payload:
        if record.body is not None:  # the writer reads the parameters out of the bytes (cheaper than a filtered copy)
            payload, body = None, record.body
        else:
            payload = {k: v for k, v in payload.items() if k not in _CONTENT}
    return (record.request_id, record.timestamp, record.endpoint, record.key_id, record.model, record.provider,
            record.deployment, record.experiment, record.variant, record.stream, record.finish_reason,
            record.status, record.outcome, record.error_type, record.error_message, record.started,
            record.finished, record.first_token or record.first_byte,
            usage.prompt_tokens if usage is not None else None,
            usage.completion_tokens if usage is not None else None,
            record.cost, record.cache_hit, record.attempts,
            [(f.deployment, f.error.code, f.error.message) for f in failures] if failures else None,
            record.client_ip, record.tags, record.client_request_id, record.cache_status, record.cache_bytes or None,
            None if record.trace is None else record.trace.trace_id, record.routing, payload,
            record.reply if keep_content else None, record.chunks if keep_content else None, body)


def without_bodies(w: Wire) -> Wire:
    """The wire form less the request's and the answer's contents (the last four fields)."""
    return (*w[:-4], None, None, None, None)


def row_from_wire(w: Wire, *, capture: str, client_ip: bool) -> Row:
    """The ``requests`` row for a record in its :func:`wire` form; never raises on content it cannot read."""
    (request_id, timestamp, endpoint, key_id, model, provider, deployment, experiment, variant, stream,
     finish_reason, status, outcome, error_type, error_message, started, finished, first, prompt_tokens,
     completion_tokens, cost, cache_hit, attempts, failures, ip, tags, client_request_id, cache, cache_bytes, trace_id,
     routing, payload, reply, chunks, body) = w
    if payload is None and body is not None:
        payload = _parameters_of(body)
    if not isinstance(payload, dict):
        payload = {}
    messages = parameters = response = tool_calls = prompt = None
    try:
        params = {k: v for k, v in payload.items() if k not in _NOT_PARAMETERS}
        if capture == "full":
            given = payload.get(INPUT_KEYS.get(endpoint, "messages"))
            messages = _json(given)
            parameters = _json(params) if params else None
            text, calls = answer_from(reply, chunks)
            response, tool_calls = text, _json(calls)
            prompt = normalized_prompt(endpoint, given)
        else:
            kept = {k: v for k, v in params.items()
                    if isinstance(v, (int, float)) or (k in _METADATA_STRINGS and isinstance(v, str))}
            parameters = _json(kept) if kept else None
    except Exception:  # a body we do not understand must not cost the record
        log.warning("history: could not read the content of request %s", request_id, exc_info=True)
    temperature = payload.get("temperature")
    max_tokens = payload.get("max_tokens", payload.get("max_completion_tokens"))
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        metadata = None
    if tags is None and metadata:
        tags = _tags(metadata)
    return (
        request_id,
        timestamp,
        endpoint,
        key_id,
        model,
        provider,
        deployment,
        experiment,
        variant,
        stream,
        capture,
        messages,
        parameters,
        temperature if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) else None,
        max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
        response,
        tool_calls,
        prompt,
        finish_reason,
        status,
        outcome,
        error_type,
        error_message,
        span_ms(started, finished),
        span_ms(started, first),
        prompt_tokens,
        completion_tokens,
        prompt_tokens + completion_tokens if prompt_tokens is not None else None,
        cost,
        cache_hit,
        attempts,
        _json([{"deployment": d, "error": code, "message": message} for d, code, message in failures])
        if failures else None,
        ip if client_ip else None,
        _json(tags) if tags else None,
        _json(metadata) if metadata else None,
        client_request_id,
        cache,
        cache_bytes,
        f"{trace_id:032x}" if trace_id is not None else None,
        routing,
    )


def _parameters_of(body: bytes) -> dict[str, Any] | None:
    """The request's parameters (``capture: metadata``): its JSON less the content, which is dropped here."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    for key in _CONTENT & doc.keys():
        del doc[key]
    return doc


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _tags(metadata: dict[str, Any]) -> list[str] | None:
    tags = metadata.get("tags")
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if isinstance(tags, list) and tags and all(isinstance(t, str) for t in tags):
        return tags
    return None


def normalized_prompt(endpoint: str, given: Any) -> str | None:
    """The last user prompt, lower-cased with runs of whitespace collapsed, at most 500 characters."""
    text: Any = None
    if endpoint in ("chat", "messages") and isinstance(given, list):
        for message in reversed(given):
            if isinstance(message, dict) and message.get("role") == "user":
                text = _text_of(message.get("content"))
                break
    elif endpoint == "completions":
        text = given if isinstance(given, str) else (given[0] if isinstance(given, list) and given else None)
    if not isinstance(text, str):
        return None
    return " ".join(text.split()).lower()[:PROMPT_CHARS] or None


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        parts = [text for p in content if isinstance(p, dict) and isinstance(text := p.get("text"), str)]
        return " ".join(parts) if parts else None
    return None


def answer(record: RequestRecord) -> tuple[str | None, list[Any] | None]:
    """The answer's text and tool calls (first choice), from the reply body or the relayed stream."""
    return answer_from(record.reply, record.chunks)


def answer_from(reply: bytes | None, chunks: list[bytes] | None) -> tuple[str | None, list[Any] | None]:
    if reply is not None:
        return _from_body(reply)
    if chunks:
        return _from_sse(b"".join(chunks))
    return None, None


def _from_body(body: bytes) -> tuple[str | None, list[Any] | None]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    choices = doc.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict):
            return _text_of(message.get("content")), message.get("tool_calls") or None
        text = choice.get("text")
        return (text if isinstance(text, str) else None), None
    content = doc.get("content")  # Anthropic Messages
    if isinstance(content, list):
        texts = [b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text"]
        tools = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
        return ("".join(texts) if texts else None), tools or None
    return None, None


def _from_sse(data: bytes) -> tuple[str | None, list[Any] | None]:
    """Join the deltas of choice 0; a cut stream gives what had arrived (a torn last event is skipped)."""
    texts: list[str] = []
    tools: dict[int, dict[str, Any]] = {}
    for line in data.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        body = line[5:].strip()
        if not body or body == b"[DONE]":
            continue
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        for choice in event.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                _add_delta(choice, texts, tools)
        if event.get("type") == "content_block_delta":  # Anthropic
            delta = event.get("delta") or {}
            if isinstance(delta.get("text"), str):
                texts.append(delta["text"])
    calls = [tools[i] for i in sorted(tools)] or None
    return ("".join(texts) if texts else None), calls


def _add_delta(choice: dict[str, Any], texts: list[str], tools: dict[int, dict[str, Any]]) -> None:
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        text = choice.get("text")  # a streamed completion
        if isinstance(text, str):
            texts.append(text)
        return
    content = delta.get("content")
    if isinstance(content, str):
        texts.append(content)
    for piece in delta.get("tool_calls") or ():
        if not isinstance(piece, dict):
            continue
        call = tools.setdefault(piece.get("index", 0), {"id": None, "type": "function",
                                                        "function": {"name": "", "arguments": ""}})
        if piece.get("id"):
            call["id"] = piece["id"]
        function = piece.get("function") or {}
        if function.get("name"):
            call["function"]["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"] += function["arguments"]
