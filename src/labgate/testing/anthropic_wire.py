"""The Anthropic Messages wire protocol (``POST /v1/messages``).

A stream is Anthropic's exact event sequence: ``message_start``, ``ping``,
then per content block ``content_block_start``, ``content_block_delta``
(``text_delta`` or ``input_json_delta``) per token, ``content_block_stop``;
then ``message_delta`` (``stop_reason``, ``stop_sequence``,
``usage.output_tokens``) and ``message_stop``. ``message_start`` carries
``usage: {input_tokens, output_tokens: 1}`` as the real API does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from labgate.testing.behaviour import Behaviour
from labgate.testing.reply import Finish, Reply, count_words, text_reply, tool_reply
from labgate.testing.wire import Answer, Call, Dialect, Endpoint, Event, Pace, sse

_STOP_REASON = {
    Finish.STOP: "end_turn",
    Finish.LENGTH: "max_tokens",
    Finish.STOP_SEQUENCE: "stop_sequence",
    Finish.TOOL_CALLS: "tool_use",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """Anthropic's error envelope (it has no ``code`` or ``param``)."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _denied(headers: Mapping[str, str], key: str) -> str | None:
    # Anthropic takes the key as `x-api-key`, or as a Bearer token (what the
    # Python SDK sends since 2.x).
    given = headers.get("x-api-key")
    if given is None and headers.get("Authorization", "").startswith("Bearer "):
        given = headers["Authorization"][7:]
    if given is None:
        return "x-api-key header is required"
    return None if given == key else "invalid x-api-key"


DIALECT = Dialect(
    error=error,
    denied=_denied,
    unknown_model=lambda model: (f"model: {model}", None),
    garbage_event=b"event: message_start\ndata: <html>simulated proxy page</html>\n\n",
)


_ROLES = ("user", "assistant")
_TOOL_CHOICES = ("auto", "any", "tool", "none")


def _check(body: dict[str, Any], headers: Mapping[str, str]) -> tuple[str, str | None] | None:
    """Every field the simulator reads, checked as the real API does (its messages are pydantic's)."""
    if "anthropic-version" not in headers:
        return "anthropic-version: header is required", None
    for field in ("model", "messages", "max_tokens"):
        if field not in body:
            return f"{field}: Field required", field
    if not isinstance(body["model"], str):
        return "model: Input should be a valid string", "model"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be a positive integer", "max_tokens"
    messages = body["messages"]
    if not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
        return "messages: Input should be a valid list of messages", "messages"
    for i, message in enumerate(messages):
        if message.get("role") not in _ROLES:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'", f"messages.{i}.role"
        if (problem := _content(message.get("content"), f"messages.{i}.content")) is not None:
            return problem
    if "system" in body and (problem := _content(body["system"], "system")) is not None:
        return problem
    return _tools(body) or _strings(body, "stop_sequences") or _stream(body)


def _content(content: object, where: str) -> tuple[str, str] | None:
    """A string, or a list of blocks whose text (in ``text`` and ``tool_result`` blocks) is text."""
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"{where}: Input should be a valid string or a valid list", where
    for i, block in enumerate(content):
        if not (isinstance(block, dict) and isinstance(block.get("type"), str)):
            return f"{where}.{i}: Input should be a valid content block", f"{where}.{i}"
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            return f"{where}.{i}.text: Input should be a valid string", f"{where}.{i}.text"
        nested = block.get("content") if block["type"] == "tool_result" else None
        if nested is not None and (problem := _content(nested, f"{where}.{i}.content")) is not None:
            return problem
    return None


def _tools(body: dict[str, Any]) -> tuple[str, str] | None:
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list)
                                  and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools)):
        return "tools: Input should be a valid list of tools, each with a string 'name'", "tools"
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not (isinstance(choice, dict) and choice.get("type") in _TOOL_CHOICES):
        return "tool_choice: Input should be an object with 'type' 'auto', 'any', 'tool' or 'none'", "tool_choice"
    if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
        return "tool_choice.name: Field required", "tool_choice.name"
    return None


def _strings(body: dict[str, Any], field: str) -> tuple[str, str] | None:
    value = body.get(field)
    if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return None
    return f"{field}: Input should be a valid list of strings", field


def _stream(body: dict[str, Any]) -> tuple[str, str] | None:
    value = body.get("stream")
    return None if value is None or isinstance(value, bool) else ("stream: Input should be a valid boolean", "stream")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            texts.append(_text_of(block.get("content")))
    return " ".join(texts)


def _answers_tool(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _reply(body: dict[str, Any], behaviour: Behaviour) -> Reply:
    messages = body["messages"]
    texts = [_text_of(body.get("system"))] + [_text_of(m.get("content")) for m in messages]
    prompt_tokens = count_words(texts)
    tools = body.get("tools") or ()
    given = body.get("tool_choice")
    choice: dict[str, Any] = given if isinstance(given, dict) else {"type": "auto"}
    if tools and choice.get("type") != "none" and not (messages and _answers_tool(messages[-1])):
        if choice.get("type") == "tool":
            names = [choice.get("name", "")]
        else:
            count = 1 if choice.get("disable_parallel_tool_use") else behaviour.parallel_tool_calls
            names = [t.get("name", "") for t in tools[:count]]
        query = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        return tool_reply(names, query=query, prompt_tokens=prompt_tokens)
    stops = body.get("stop_sequences")
    return text_reply(
        behaviour,
        prompt_tokens=prompt_tokens,
        max_tokens=body["max_tokens"],
        stop=[s for s in stops if isinstance(s, str)] if isinstance(stops, list) else (),
    )


def _blocks(reply: Reply, call: Call) -> list[dict[str, Any]]:
    if not reply.tool_calls:
        return [{"type": "text", "text": reply.text}]
    return [
        {"type": "tool_use", "id": f"toolu_sim{call.seq}_{i}", "name": tc.name, "input": tc.input}
        for i, tc in enumerate(reply.tool_calls)
    ]


def _messages(body: dict[str, Any], behaviour: Behaviour, call: Call) -> Answer:
    reply = _reply(body, behaviour)
    message = {
        "id": f"msg_sim{call.seq}",
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": _blocks(reply, call),
        "stop_reason": _STOP_REASON[reply.finish],
        "stop_sequence": reply.stop_sequence,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens},
    }
    if body.get("stream") is True:
        return Answer(reply.completion_tokens, events=_events(reply, message))
    return Answer(reply.completion_tokens, body=orjson.dumps(message))


def _event(pace: Pace, data: dict[str, Any]) -> Event:
    return pace, sse(orjson.dumps(data), data["type"])


def _events(reply: Reply, message: dict[str, Any]) -> tuple[Event, ...]:
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": 1},
    }
    events = [_event(Pace.HEAD, {"type": "message_start", "message": start}), _event(Pace.HEAD, {"type": "ping"})]
    for index, block in enumerate(message["content"]):
        opened: dict[str, Any]
        if block["type"] == "text":
            opened = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in reply.pieces]
        else:
            opened = {**block, "input": {}}
            pieces = reply.tool_calls[index].pieces
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
        events.append(_event(Pace.HEAD, {"type": "content_block_start", "index": index, "content_block": opened}))
        events += [_event(Pace.TOKEN, {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        events.append(_event(Pace.NEXT, {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    usage = {"output_tokens": reply.completion_tokens}
    events.append(_event(Pace.NEXT, {"type": "message_delta", "delta": delta, "usage": usage}))
    events.append(_event(Pace.NEXT, {"type": "message_stop"}))
    return tuple(events)


MESSAGES = Endpoint(DIALECT, _check, _messages)
