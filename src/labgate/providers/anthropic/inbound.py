"""Anthropic Messages → OpenAI chat, for clients that speak Anthropic (``POST /v1/messages``).

The mirror image of :mod:`.translate`: a Messages request becomes an OpenAI
chat request for OpenAI-dialect upstreams, and their chat completion becomes
a Messages response (streams: :mod:`.inbound_stream`). Pure functions over
parsed JSON, which the surface has already checked for shape.

What the OpenAI dialect cannot carry is handled one of three ways:

- dropped, when no OpenAI-dialect model could act on it: ``thinking`` and
  ``redacted_thinking`` blocks, the ``thinking`` setting, ``cache_control``,
  ``service_tier`` and other bookkeeping keys;
- written into the text, when the meaning must reach the model: a tool
  result's ``is_error`` becomes a leading :data:`TOOL_ERROR_MARK`, which
  :mod:`.translate` reads back; images inside a tool result move to a user
  message right after the tool messages;
- reported as the reason the request is *native only* (server tools,
  documents, MCP servers, ...): the request is then served by Anthropic
  deployments alone, untranslated.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

import orjson

from labgate.errors import UpstreamBadResponseError
from labgate.providers.anthropic.translate import FINISH_REASONS, TOOL_ERROR_MARK, tool_call

# OpenAI finish_reason → Anthropic stop_reason: FINISH_REASONS inverted, the first
# stop reason listed for a finish reason winning; legacy function_call is a tool use.
STOP_REASONS: Mapping[str, str] = MappingProxyType(
    {**{finish: stop for stop, finish in reversed(list(FINISH_REASONS.items()))}, "function_call": "tool_use"})

_TOOL_CHOICES: Mapping[str, str] = MappingProxyType({"auto": "auto", "any": "required", "none": "none"})
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
# Request keys only Anthropic's own servers can honour.
_NATIVE_ONLY_KEYS = ("mcp_servers", "container", "output_format")
IMAGE_TOKENS = 1600  # Anthropic's cost of an image scaled to its 1.15-megapixel limit
MESSAGE_TOKENS = 4  # role and turn markers per message


def messages_to_chat_request(body: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The OpenAI chat body for a Messages body, and why it is native only (or None).

    ``body`` is not mutated. When a reason is returned the OpenAI body still
    holds everything that could be translated (routing reads it), but it must
    not be sent: the request's meaning needs an Anthropic upstream.
    """
    reasons: list[str] = [f"'{key}'" for key in _NATIVE_ONLY_KEYS if body.get(key) is not None]
    messages: list[dict[str, Any]] = []
    _add_system(body.get("system"), messages)
    for i, message in enumerate(body["messages"]):
        where = f"messages.{i}.content"
        if message["role"] == "user":
            _add_user(message["content"], where, messages, reasons)
        else:
            _add_assistant(message["content"], where, messages, reasons)
    out: dict[str, Any] = {"model": body["model"], "messages": messages,
                           "max_completion_tokens": body["max_tokens"]}
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    _add_tools(body, out, reasons)
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # message_delta reports usage
    return out, (", ".join(reasons) if reasons else None)


# ---------------------------------------------------------------- messages


def _add_system(system: Any, messages: list[dict[str, Any]]) -> None:
    if isinstance(system, str):
        if system:
            messages.append({"role": "system", "content": system})
    elif system:
        parts = [_text_part(block["text"]) for block in system]
        messages.append({"role": "system", "content": _content(parts)})


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text is sent as a plain string (every engine reads that); anything else as parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _add_user(content: Any, where: str, messages: list[dict[str, Any]], reasons: list[str]) -> None:
    if isinstance(content, str):
        messages.append({"role": "user", "content": content})
        return
    parts: list[dict[str, Any]] = []
    result_images: list[dict[str, Any]] = []  # OpenAI tool messages carry text only
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "tool_result":
            messages.append(_tool_message(block, f"{where}.{j}", result_images, reasons))
        elif kind == "text":
            parts.append(_text_part(block["text"]))
        elif kind == "image":
            parts.append(_image_part(block))
        elif kind not in _DROPPED_BLOCKS:
            reasons.append(f"a {kind!r} block ({where}.{j})")
    # Tool results come first: OpenAI wants them right after the assistant's tool calls.
    parts = result_images + parts
    if parts:
        messages.append({"role": "user", "content": _content(parts)})


def _image_part(block: Mapping[str, Any]) -> dict[str, Any]:
    source = block["source"]
    url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: Mapping[str, Any], where: str, images: list[dict[str, Any]],
                  reasons: list[str]) -> dict[str, Any]:
    content = block.get("content")
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            parts.append(_text_part(content))
    elif content:
        for k, item in enumerate(content):
            if item["type"] == "text":
                parts.append(_text_part(item["text"]))
            elif item["type"] == "image":
                images.append(_image_part(item))
            else:
                reasons.append(f"a {item['type']!r} block ({where}.content.{k})")
    if block.get("is_error") is True:
        if len(parts) > 1:
            parts.insert(0, _text_part(TOOL_ERROR_MARK))
        else:
            text = parts[0]["text"] if parts else ""
            parts = [_text_part(f"{TOOL_ERROR_MARK} {text}" if text else TOOL_ERROR_MARK)]
    text_or_parts: str | list[dict[str, Any]] = _content(parts) if parts else ""
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text_or_parts}


def _add_assistant(content: Any, where: str, messages: list[dict[str, Any]], reasons: list[str]) -> None:
    if isinstance(content, str):
        if content:
            messages.append({"role": "assistant", "content": content})
        return
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            parts.append(_text_part(block["text"]))
        elif kind == "tool_use":
            calls.append(tool_call(block))
        elif kind not in _DROPPED_BLOCKS:
            reasons.append(f"a {kind!r} block ({where}.{j})")
    if not parts and not calls:
        return  # only thinking: nothing an OpenAI-dialect model reads
    message: dict[str, Any] = {"role": "assistant", "content": _content(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    messages.append(message)


# ---------------------------------------------------------------- tools


def _add_tools(body: Mapping[str, Any], out: dict[str, Any], reasons: list[str]) -> None:
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        kind = tool.get("type")
        if kind not in (None, "custom"):
            reasons.append(f"the {kind!r} tool (tools.{i})")
            continue
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool["input_schema"]
        tools.append({"type": "function", "function": function})
    if not tools:
        return
    out["tools"] = tools
    choice = body.get("tool_choice")
    if choice is None:
        return
    if choice["type"] == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        out["tool_choice"] = _TOOL_CHOICES[choice["type"]]
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


# ---------------------------------------------------------------- responses


def chat_completion_to_message(completion: Any, *, where: str) -> dict[str, Any]:
    """The Messages response for an OpenAI ``chat.completion`` body (its first choice)."""
    choices = completion.get("choices") if isinstance(completion, Mapping) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, Mapping) else None
    if not isinstance(message, Mapping):
        raise UpstreamBadResponseError(f"{where} sent a chat completion without a message")
    content: list[dict[str, Any]] = []
    text = _message_text(message)
    if text:
        content.append({"type": "text", "text": text})
    for k, call in enumerate(message.get("tool_calls") or ()):
        content.append(tool_use_block(call, where=f"{where} tool call {k}"))
    reason, sequence = stop_reason(cast(Mapping[str, Any], choice))  # a Mapping: it held the message
    return {"id": completion.get("id"), "type": "message", "role": "assistant",
            "model": completion.get("model"), "content": content, "stop_reason": reason,
            "stop_sequence": sequence, "usage": anthropic_usage(completion.get("usage"))}


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # some engines answer with text parts
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    if not content and isinstance(message.get("refusal"), str):
        return str(message["refusal"])
    return content if isinstance(content, str) else ""


def tool_use_block(call: Any, *, where: str) -> dict[str, Any]:
    """An Anthropic ``tool_use`` block for an OpenAI tool call; arguments must be a JSON object."""
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping):
        raise UpstreamBadResponseError(f"{where} has no 'function'")
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
            "input": tool_input(function.get("arguments"), where=where)}


def tool_input(arguments: Any, *, where: str) -> dict[str, Any]:
    """Parsed tool-call arguments ("" is ``{}``); anything but a JSON object is a bad response."""
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, (str, bytes)) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamBadResponseError(
            f"{where}: the model's tool arguments are not a JSON object: {str(arguments)[:80]!r}")
    return parsed


def stop_reason(choice: Mapping[str, Any]) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for an OpenAI choice.

    OpenAI does not say which stop sequence ended the text; vLLM does, in the
    choice's ``stop_reason``, and then it is reported as ``stop_sequence``.
    """
    finish = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str):
        return "stop_sequence", matched
    return (STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"), None


def anthropic_usage(usage: Any) -> dict[str, int]:
    """Anthropic's ``usage`` for OpenAI's: cached prompt tokens become ``cache_read_input_tokens``."""
    if not isinstance(usage, Mapping):
        return {"input_tokens": 0, "output_tokens": 0}
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0
    out = {"input_tokens": int(usage.get("prompt_tokens") or 0) - cached,
           "output_tokens": int(usage.get("completion_tokens") or 0)}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


# ---------------------------------------------------------------- token estimate


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """A rough count of a Messages request's input tokens, without a tokenizer.

    UTF-8 bytes of every text, tool input, tool definition and other block
    divided by 4 (about 4 bytes per token in English and code, about 1.3 per
    CJK character), plus :data:`IMAGE_TOKENS` per image and
    :data:`MESSAGE_TOKENS` per message.
    """
    size = 0
    images = 0
    system = body.get("system")
    if isinstance(system, str):
        size += len(system.encode())
    elif isinstance(system, list):
        size += sum(len(str(block.get("text", "")).encode()) for block in system)
    for message in body.get("messages") or ():
        added, seen = _content_size(message.get("content"))
        size, images = size + added, images + seen
    for tool in body.get("tools") or ():
        size += len(orjson.dumps({k: v for k, v in tool.items() if k != "cache_control"}))
    messages = len(body.get("messages") or ())
    return -(-size // 4) + images * IMAGE_TOKENS + messages * MESSAGE_TOKENS


def _content_size(content: Any) -> tuple[int, int]:
    """UTF-8 bytes of the text in a message's content, and how many images it holds."""
    if isinstance(content, str):
        return len(content.encode()), 0
    size = images = 0
    for block in content if isinstance(content, list) else ():
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            size += len(str(block.get("text", "")).encode())
        elif kind == "image":
            images += 1
        elif kind == "tool_result":
            added, seen = _content_size(block.get("content"))
            size, images = size + added, images + seen
        elif kind == "tool_use":
            size += len(str(block.get("name", "")).encode()) + len(orjson.dumps(block.get("input")))
        elif kind is not None:
            size += len(orjson.dumps(block))
    return size, images
