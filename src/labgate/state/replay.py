"""A cached answer is stored whole; a stream is assembled into one and replayed from one.

:func:`assemble` turns the SSE bytes a stream relayed (OpenAI chat or
completion chunks, or Anthropic Messages events) into the whole answer the
same request would have got without ``stream`` — or ``None`` when the stream
did not finish (no ``[DONE]`` / ``message_stop``), so a truncated stream is
never stored. :func:`replay` does the opposite: the SSE events a client that
asked for a stream gets from a whole answer, in the same dialect, ending as a
live stream ends. Both are pure (no I/O) and only run on cache misses being
stored and on streamed hits.
"""

from __future__ import annotations

from typing import Any

import orjson

from labgate.providers.sse import SSEBuffer, event_fields

_DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


def _events(chunks: list[bytes]) -> list[tuple[str | None, bytes]]:
    buffer = SSEBuffer()
    out: list[tuple[str | None, bytes]] = []
    for chunk in chunks:
        out.extend(event_fields(e) for e in buffer.feed(chunk) if e.strip())
    if buffer.pending.strip():
        out.append(event_fields(buffer.pending))
    return out


def assemble(chunks: list[bytes], *, dialect: str, endpoint: str) -> dict[str, Any] | None:
    """The whole answer a finished stream stands for, or None if it did not finish."""
    events = _events(chunks)
    if dialect == "anthropic":
        return _assemble_anthropic(events)
    return _assemble_openai(events, completion=endpoint == "completions")


# --------------------------------------------------------------------- OpenAI


def _assemble_openai(events: list[tuple[str | None, bytes]], *, completion: bool) -> dict[str, Any] | None:
    doc: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    tools: dict[int, dict[int, dict[str, Any]]] = {}
    finished = False
    for _, data in events:
        if data == _DONE:
            finished = True
            break
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        if not doc:
            doc = {k: v for k, v in chunk.items() if k not in ("choices", "usage", "object")}
            doc["object"] = "text_completion" if completion else "chat.completion"
        if chunk.get("usage"):
            doc["usage"] = chunk["usage"]
        for part in chunk.get("choices") or ():
            index = part.get("index", 0)
            choice = choices.setdefault(index, {"index": index})
            if completion:
                choice["text"] = choice.get("text", "") + (part.get("text") or "")
                choice["logprobs"] = part.get("logprobs")
            else:
                _delta(choice, part.get("delta") or {}, tools.setdefault(index, {}))
                if part.get("logprobs") is not None:
                    _logprobs(choice, part["logprobs"])
            if part.get("finish_reason") is not None:
                choice["finish_reason"] = part["finish_reason"]
    if not finished or not choices:
        return None
    for index, calls in tools.items():
        if calls:
            choices[index]["message"]["tool_calls"] = [calls[i] for i in sorted(calls)]
    doc["choices"] = [_ordered_choice(choices[i], completion) for i in sorted(choices)]
    if "usage" in doc:
        doc["usage"] = doc.pop("usage")  # last, as upstreams write it
    return doc


def _delta(choice: dict[str, Any], delta: dict[str, Any], calls: dict[int, dict[str, Any]]) -> None:
    message = choice.setdefault("message", {"role": "assistant", "content": None})
    if delta.get("role"):
        message["role"] = delta["role"]
    for field in ("content", "refusal", "reasoning_content", "reasoning"):
        piece = delta.get(field)
        if isinstance(piece, str):
            message[field] = (message.get(field) or "") + piece
    for call in delta.get("tool_calls") or ():
        slot = calls.setdefault(call.get("index", len(calls)),
                                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] += function["name"]
        if function.get("arguments"):
            slot["function"]["arguments"] += function["arguments"]


def _logprobs(choice: dict[str, Any], logprobs: dict[str, Any]) -> None:
    kept = choice.setdefault("logprobs", {})
    for field in ("content", "refusal"):
        if logprobs.get(field):
            kept[field] = (kept.get(field) or []) + logprobs[field]


def _ordered_choice(choice: dict[str, Any], completion: bool) -> dict[str, Any]:
    finish = choice.get("finish_reason")
    if completion:
        return {"text": choice.get("text", ""), "index": choice["index"], "logprobs": choice.get("logprobs"),
                "finish_reason": finish}
    return {"index": choice["index"], "message": choice.get("message", {"role": "assistant", "content": None}),
            "logprobs": choice.get("logprobs"), "finish_reason": finish}


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _replay_openai(doc: dict[str, Any], *, completion: bool, include_usage: bool) -> list[bytes]:
    head = {k: v for k, v in doc.items() if k not in ("choices", "usage", "object")}
    head["object"] = "text_completion" if completion else "chat.completion.chunk"
    out: list[bytes] = []
    for choice in doc.get("choices") or ():
        index = choice.get("index", 0)
        if completion:
            out.append(_sse({**head, "choices": [{"text": choice.get("text", ""), "index": index,
                                                  "logprobs": choice.get("logprobs"), "finish_reason": None}]}))
            out.append(_sse({**head, "choices": [{"text": "", "index": index, "logprobs": None,
                                                  "finish_reason": choice.get("finish_reason")}]}))
            continue
        message = choice.get("message") or {}
        role: dict[str, Any] = {"role": message.get("role", "assistant")}
        if message.get("content") is not None:
            role["content"] = ""
        out.append(_sse({**head, "choices": [{"index": index, "delta": role, "logprobs": None,
                                              "finish_reason": None}]}))
        for field in ("reasoning_content", "reasoning", "content", "refusal"):
            if message.get(field):
                out.append(_sse({**head, "choices": [{"index": index, "delta": {field: message[field]},
                                                      "logprobs": choice.get("logprobs") if field == "content"
                                                      else None, "finish_reason": None}]}))
        for i, call in enumerate(message.get("tool_calls") or ()):
            out.append(_sse({**head, "choices": [{"index": index, "delta": {"tool_calls": [{"index": i, **call}]},
                                                  "logprobs": None, "finish_reason": None}]}))
        out.append(_sse({**head, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                              "finish_reason": choice.get("finish_reason")}]}))
    if include_usage and doc.get("usage") is not None:
        out.append(_sse({**head, "choices": [], "usage": doc["usage"]}))
    out.append(DONE_EVENT)
    return out


# ------------------------------------------------------------------ Anthropic


def _assemble_anthropic(events: list[tuple[str | None, bytes]]) -> dict[str, Any] | None:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    for _, data in events:
        event = orjson.loads(data)
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "message_start":
            message = dict(event["message"])
            message["usage"] = dict(message.get("usage") or {})
        elif message is None or kind == "error":
            return None
        elif kind == "content_block_start":
            blocks[event["index"]] = dict(event["content_block"])
        elif kind == "content_block_delta":
            _anthropic_delta(blocks[event["index"]], event["delta"], partial, event["index"])
        elif kind == "content_block_stop":
            index = event["index"]
            if index in partial:
                text = partial.pop(index)
                blocks[index]["input"] = orjson.loads(text) if text else {}
        elif kind == "message_delta":
            message.update(event.get("delta") or {})
            message["usage"].update(event.get("usage") or {})
        elif kind == "message_stop":
            message["content"] = [blocks[i] for i in sorted(blocks)]
            return message
    return None


def _anthropic_delta(block: dict[str, Any], delta: dict[str, Any], partial: dict[int, str], index: int) -> None:
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + delta.get("text", "")
    elif kind == "input_json_delta":
        partial[index] = partial.get(index, "") + delta.get("partial_json", "")
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
    elif kind == "signature_delta":
        block["signature"] = block.get("signature", "") + delta.get("signature", "")
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta.get("citation"))


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_EMPTY_BLOCK: dict[str, dict[str, Any]] = {  # what a block's start event holds before its deltas
    "text": {"text": ""}, "tool_use": {"input": {}}, "server_tool_use": {"input": {}},
    "thinking": {"thinking": "", "signature": ""}}


def _replay_anthropic(doc: dict[str, Any]) -> list[bytes]:
    usage = dict(doc.get("usage") or {})
    start_usage = {**usage, "output_tokens": min(1, usage.get("output_tokens", 0))}
    head = {**{k: v for k, v in doc.items() if k not in ("content", "usage")}, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    out = [_event("message_start", {"type": "message_start", "message": head}),
           b'event: ping\ndata: {"type":"ping"}\n\n']
    for index, block in enumerate(doc.get("content") or ()):
        kind = block.get("type")
        start = {**block, **_EMPTY_BLOCK.get(kind, {})}
        if kind == "text" and "citations" in block:
            start["citations"] = []
        out.append(_event("content_block_start", {"type": "content_block_start", "index": index,
                                                  "content_block": start}))
        for delta in _block_deltas(block):
            out.append(_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                      "delta": delta}))
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(_event("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": doc.get("stop_reason"),
                                                  "stop_sequence": doc.get("stop_sequence")},
                                        "usage": usage}))
    out.append(_event("message_stop", {"type": "message_stop"}))
    return out


def _block_deltas(block: dict[str, Any]) -> list[dict[str, Any]]:
    kind = block.get("type")
    if kind == "text":
        deltas: list[dict[str, Any]] = [{"type": "citations_delta", "citation": c}
                                        for c in block.get("citations") or ()]
        return [*deltas, {"type": "text_delta", "text": block.get("text", "")}]
    if kind in ("tool_use", "server_tool_use"):
        return [{"type": "input_json_delta", "partial_json": orjson.dumps(block.get("input", {})).decode()}]
    if kind == "thinking":
        return [{"type": "thinking_delta", "thinking": block.get("thinking", "")},
                {"type": "signature_delta", "signature": block.get("signature", "")}]
    return []  # other blocks (redacted thinking, tool results) come whole in their start event


def replay(doc: dict[str, Any], *, dialect: str, endpoint: str, include_usage: bool) -> list[bytes]:
    """The SSE events of a stream that carries ``doc`` (a whole answer in ``dialect``)."""
    if dialect == "anthropic":
        return _replay_anthropic(doc)
    return _replay_openai(doc, completion=endpoint == "completions", include_usage=include_usage)
