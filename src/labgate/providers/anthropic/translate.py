"""OpenAI chat completions ⇄ Anthropic Messages, for whole requests and responses.

Pure functions over parsed JSON: no I/O, no clock (``created`` is passed in).
A request the upstream could not honour faithfully (``n > 1``, ``logprobs``,
``response_format: json_object``, legacy ``functions``) is refused with a
:class:`RequestError` naming the parameter, rather than answered differently
from what the client asked; parameters that only tune sampling or
bookkeeping are dropped. ``response_format: json_schema`` becomes Anthropic's
structured output (``output_config.format``), whose JSON text comes back as
the message content.

Ids are given in the client's dialect (:func:`dialect_id`): ``chatcmpl-…``
for a translated message, ``msg_…`` for a translated chat completion.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from labgate.errors import RequestError, UpstreamBadResponseError
from labgate.providers.base import Usage

# Anthropic stop_reason → OpenAI finish_reason. pause_turn (a server tool paused a long
# turn) has no OpenAI equivalent; the turn did end normally from the client's view.
# Read backwards (inbound.STOP_REASONS), the first stop reason per finish reason wins.
FINISH_REASONS: Mapping[str, str] = MappingProxyType({
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
})

_TOOL_CHOICES: Mapping[str, dict[str, str]] = MappingProxyType({
    "auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}})
_SYSTEM_ROLES = frozenset({"system", "developer"})
# How an Anthropic tool result's is_error travels in an OpenAI tool message: as the
# text's first word (inbound.py writes it, _tool_result reads it back).
TOOL_ERROR_MARK = "[tool error]"
_EMPTY_SCHEMA = MappingProxyType({"type": "object", "properties": {}})
CHAT_ID_PREFIX = "chatcmpl-"  # OpenAI's chat completion ids
MESSAGE_ID_PREFIX = "msg_"  # Anthropic's message ids
_ID_PREFIXES = (CHAT_ID_PREFIX, MESSAGE_ID_PREFIX)
# The name an Anthropic structured-output schema gets as an OpenAI json_schema (the
# Messages API names none; OpenAI requires one matching ^[a-zA-Z0-9_-]{1,64}$).
OUTPUT_SCHEMA_NAME = "output"


def dialect_id(upstream: Any, prefix: str) -> str:
    """The upstream's response id in the client's dialect: ``prefix`` + the upstream's own part.

    ``chatcmpl-abc`` becomes ``msg_abc`` and back (so the id still finds the
    upstream's logs); an id of neither form gets ``prefix`` in front; a missing
    one is 96 random bits.
    """
    if not isinstance(upstream, str) or not upstream:
        return prefix + os.urandom(12).hex()
    if upstream.startswith(prefix):
        return upstream
    for foreign in _ID_PREFIXES:
        if upstream.startswith(foreign):
            return prefix + upstream[len(foreign):]
    return prefix + upstream


def chat_request_to_messages(body: Mapping[str, Any], *, model: str, default_max_tokens: int,
                             stream: bool) -> dict[str, Any]:
    """An Anthropic ``/v1/messages`` body for an OpenAI ``/v1/chat/completions`` body.

    ``body`` is not mutated. Raises :class:`RequestError` (with ``param``) for what
    cannot be translated faithfully.
    """
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise RequestError("'messages' must be a list of messages", param="messages")
    system, turns = _split_messages(messages)
    if not turns:
        raise RequestError("'messages' must hold at least one non-system message",
                           param="messages")
    out: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(body, default_max_tokens),
                           "messages": turns}
    if system:
        out["system"] = system
    _add_sampling(body, out)
    _add_tools(body, out)
    _add_output_format(body.get("response_format"), out)
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if stream:
        out["stream"] = True
    return out


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Refuse OpenAI parameters whose meaning would silently be lost upstream."""
    n = body.get("n")
    if n is not None and n != 1:
        raise RequestError("this provider returns one choice; 'n' must be 1", param="n")
    for key in ("logprobs", "top_logprobs"):
        if body.get(key):
            raise RequestError("this provider does not return log probabilities", param=key)
    if body.get("logit_bias"):
        raise RequestError("this provider does not support 'logit_bias'", param="logit_bias")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and set(modalities) - {"text"}):
        raise RequestError("this provider answers with text only", param="modalities")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise RequestError(f"'{legacy}' is not supported here; use 'tools'", param=legacy)


def _max_tokens(body: Mapping[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RequestError(f"'{key}' must be a positive integer", param=key)
        return value
    return default


def _add_sampling(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        # OpenAI accepts 0..2, Anthropic 0..1. Clamp rather than rescale: both default
        # to 1.0 and clients mostly send values in 0..1, which then mean the same thing;
        # rescaling would change every common value to serve the rare one above 1.
        out["temperature"] = min(float(temperature), 1.0)
    for key in ("top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = list(stop)


# ---------------------------------------------------------------- messages


def _split_messages(messages: list[Any]) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """The system prompt, and the turns with same-role neighbours merged.

    System texts are joined, except that one system message made of several
    text parts keeps them as blocks (what an Anthropic client sent as blocks).
    """
    system: list[str] = []
    system_messages: list[Any] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError("each message must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            system.extend(_texts(message.get("content"), f"messages[{i}].content"))
            system_messages.append(message.get("content"))
            continue
        role, blocks = _turn(message, i)
        if not blocks:
            continue  # Anthropic rejects empty turns; an empty message adds nothing
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if len(system_messages) == 1 and isinstance(system_messages[0], list) and len(system) > 1:
        return _text_blocks(system), turns
    return "\n\n".join(t for t in system if t), turns


def _turn(message: Mapping[str, Any], i: int) -> tuple[str, list[dict[str, Any]]]:
    role = message.get("role")
    where = f"messages[{i}]"
    if role == "user":
        return "user", _user_blocks(message.get("content"), f"{where}.content")
    if role == "assistant":
        return "assistant", _assistant_blocks(message, where)
    if role == "tool":
        return "user", [_tool_result(message, where)]
    raise RequestError(f"unsupported message role {role!r}", param=f"{where}.role")


def _texts(content: Any, where: str) -> list[str]:
    """The texts of a string or a list of text parts (system, developer and tool content)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise RequestError("content must be a string or a list of parts", param=where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            raise RequestError("only text parts are allowed here", param=f"{where}[{j}]")
        texts.append(str(part.get("text", "")))
    return texts


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return _text_blocks(_texts(content, where))
    if not isinstance(content, list):
        raise RequestError("content must be a string or a list of parts", param=where)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            blocks.extend(_text_blocks([str(part.get("text", ""))]))
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), f"{where}[{j}].image_url"))
        else:
            raise RequestError(f"content part type {kind!r} is not supported by this provider",
                               param=f"{where}[{j}].type")
    return blocks


def _text_blocks(texts: list[str]) -> list[dict[str, Any]]:
    # Anthropic rejects empty text blocks.
    return [{"type": "text", "text": t} for t in texts if t]


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str):
        raise RequestError("image_url needs a 'url'", param=f"{where}.url")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    header, comma, data = url.partition(",")
    if not (header.startswith("data:") and header.endswith(";base64") and comma):
        raise RequestError("image URLs must be http(s) or base64 data: URLs", param=f"{where}.url")
    media_type = header[len("data:"):-len(";base64")].split(";")[0]
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, list):  # text and refusal parts
        texts = [str(p.get("text") or p.get("refusal") or "") for p in content
                 if isinstance(p, Mapping)]
    else:
        texts = _texts(content, f"{where}.content")
    blocks = _text_blocks(texts)
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise RequestError("'tool_calls' must be a list", param=f"{where}.tool_calls")
    blocks.extend(_tool_use(call, f"{where}.tool_calls[{k}]") for k, call in enumerate(tool_calls))
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, Mapping) or call.get("type", "function") != "function":
        raise RequestError("only function tool calls are supported", param=f"{where}.type")
    function = call.get("function")
    if not isinstance(function, Mapping):
        raise RequestError("a tool call needs a 'function'", param=f"{where}.function")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, (str, bytes)) else arguments
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise RequestError("tool call arguments must be a JSON object",
                           param=f"{where}.function.arguments")
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
            "input": parsed}


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise RequestError("a tool message needs a 'tool_call_id'", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content == TOOL_ERROR_MARK or content.startswith(TOOL_ERROR_MARK + " "):
            block["is_error"] = True
            content = content[len(TOOL_ERROR_MARK) + 1:]
        if content:
            block["content"] = content
    else:
        texts = _texts(content, f"{where}.content")
        if texts and texts[0] == TOOL_ERROR_MARK:
            block["is_error"] = True
            texts = texts[1:]
        parts = _text_blocks(texts)
        if parts:
            block["content"] = parts
    return block


# ---------------------------------------------------------------- structured output


def _add_output_format(response_format: Any, out: dict[str, Any]) -> None:
    """OpenAI ``response_format`` → Anthropic ``output_config.format`` (structured outputs).

    ``json_schema`` carries its schema over (Anthropic constrains decoding to it,
    as OpenAI's ``strict: true`` does; ``name`` and ``description`` have no
    Anthropic field and only label the schema). ``json_object`` ("any JSON
    object") has no Anthropic form and is refused rather than answered as text.
    """
    if response_format is None:
        return
    if not isinstance(response_format, Mapping):
        raise RequestError("'response_format' must be an object", param="response_format")
    kind = response_format.get("type", "text")
    if kind == "text":
        return
    if kind == "json_object":
        raise RequestError("this provider has no JSON-object mode: send response_format type 'json_schema' "
                           "with a schema (Anthropic structured outputs)", param="response_format.type")
    if kind != "json_schema":
        raise RequestError(f"unsupported response_format type {kind!r}", param="response_format.type")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        raise RequestError("response_format json_schema needs a 'schema' object",
                           param="response_format.json_schema.schema")
    out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}


# ---------------------------------------------------------------- tools


def _add_tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise RequestError("'tools' must be a list", param="tools")
        out["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and (tools or choice):
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":  # Anthropic allows the flag on auto, any and tool
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping) or tool.get("type") != "function":
        raise RequestError("only function tools are supported", param=f"{where}.type")
    function = tool.get("function")
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise RequestError("a function tool needs a 'name'", param=f"{where}.function.name")
    out: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    out["input_schema"] = function.get("parameters") or dict(_EMPTY_SCHEMA)
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return dict(_TOOL_CHOICES[choice])
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if isinstance(name, str):
            return {"type": "tool", "name": name}
    raise RequestError("'tool_choice' must be auto, required, none or a named function",
                       param="tool_choice")


# ---------------------------------------------------------------- responses


def message_to_chat_completion(message: Any, *, created: int, where: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` for an Anthropic ``message`` response body.

    ``where`` names the upstream in the :class:`UpstreamBadResponseError` raised when
    the body is not a message.
    """
    if not isinstance(message, Mapping) or not isinstance(message.get("content"), list):
        raise UpstreamBadResponseError(f"{where} sent a message without a 'content' list")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message["content"]:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            tool_calls.append(tool_call(block))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    usage = read_usage(message.get("usage"))
    return {
        "id": dialect_id(message.get("id"), CHAT_ID_PREFIX),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": finish_reason(message.get("stop_reason"))}],
        "usage": usage_json(usage, cached=cached_tokens(message.get("usage"))),
    }


def tool_call(block: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call for an Anthropic ``tool_use`` block (arguments as compact JSON)."""
    return {"id": block.get("id"), "type": "function",
            "function": {"name": block.get("name"),
                         "arguments": orjson.dumps(block.get("input") or {}).decode()}}


def finish_reason(stop_reason: Any) -> str:
    """The OpenAI finish_reason for an Anthropic stop_reason (unknown or absent → ``stop``)."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def read_usage(usage: Any) -> Usage:
    """Anthropic usage → ours; cache reads and cache writes count as prompt tokens."""
    if not isinstance(usage, Mapping):
        return Usage()
    read, write = int(usage.get("cache_read_input_tokens") or 0), int(usage.get("cache_creation_input_tokens") or 0)
    return Usage(prompt_tokens=int(usage.get("input_tokens") or 0) + read + write,
                 completion_tokens=int(usage.get("output_tokens") or 0), cached_tokens=read, cache_write_tokens=write)


def cached_tokens(usage: Any) -> int:
    """Anthropic's cache reads, which OpenAI reports as ``prompt_tokens_details.cached_tokens``."""
    return int(usage.get("cache_read_input_tokens") or 0) if isinstance(usage, Mapping) else 0


def usage_json(usage: Usage, *, cached: int = 0) -> dict[str, Any]:
    """OpenAI's ``usage`` object; ``prompt_tokens_details`` only when the cache was read."""
    out: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens,
                           "completion_tokens": usage.completion_tokens,
                           "total_tokens": usage.total_tokens}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out
