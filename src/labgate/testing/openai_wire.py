"""The OpenAI wire protocol: chat completions, completions, embeddings, models.

Bodies follow what api.openai.com sends, trimmed to the fields clients read.
A streamed chat reply is: a ``role`` delta, one delta per token (or per
tool-call piece: a head with ``id``/``type``/``function.name`` and empty
arguments, then the argument pieces), a chunk with ``finish_reason``, with
``stream_options.include_usage`` a chunk with empty ``choices`` and
``usage`` (and ``"usage": null`` on every earlier chunk), then ``[DONE]``.
With ``n`` > 1 every choice is generated (the same text), and a stream
interleaves the choices' chunks, each carrying its ``index``. Requests are
checked first (:mod:`labgate.testing.openai_checks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from labgate.testing import openai_checks
from labgate.testing.behaviour import Behaviour
from labgate.testing.reply import (
    Finish,
    Reply,
    count_words,
    embedding,
    embedding_base64,
    text_reply,
    tool_reply,
)
from labgate.testing.wire import Answer, Call, Dialect, Endpoint, Event, Pace, sse

_FINISH = {
    Finish.STOP: "stop",
    Finish.LENGTH: "length",
    Finish.STOP_SEQUENCE: "stop",
    Finish.TOOL_CALLS: "tool_calls",
}
_DONE = (Pace.NEXT, b"data: [DONE]\n\n")


def error(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """OpenAI's error envelope."""
    if status == 429:
        kind = "requests"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _denied(headers: Mapping[str, str], key: str) -> str | None:
    given = headers.get("Authorization", "")
    if not given.startswith("Bearer "):
        return "You didn't provide an API key. Provide it in the Authorization header (Bearer auth)."
    if given[7:] != key:
        return "Incorrect API key provided."
    return None


def _unknown_model(model: str) -> tuple[str, str | None]:
    return f"The model `{model}` does not exist or you do not have access to it.", "model_not_found"


DIALECT = Dialect(
    error=error,
    denied=_denied,
    unknown_model=_unknown_model,
    garbage_event=b"data: <html>simulated proxy page</html>\n\n",
)


# --- chat completions -----------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _chat_reply(body: dict[str, Any], behaviour: Behaviour) -> Reply:
    messages = body["messages"]
    prompt_tokens = count_words(_text_of(m.get("content")) for m in messages)
    tools = body.get("tools") or ()
    choice = body.get("tool_choice", "auto")
    if tools and choice != "none" and (not messages or messages[-1].get("role") != "tool"):
        if isinstance(choice, dict):
            names = [(choice.get("function") or choice).get("name", "")]
        else:
            count = behaviour.parallel_tool_calls if body.get("parallel_tool_calls") is not False else 1
            names = [(t.get("function") or t).get("name", "") for t in tools[:count]]
        query = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        return tool_reply(names, query=query, prompt_tokens=prompt_tokens)
    return text_reply(
        behaviour,
        prompt_tokens=prompt_tokens,
        max_tokens=_max_tokens(body, "max_completion_tokens", "max_tokens"),
        stop=_stops(body.get("stop")),
        json_mode=(body.get("response_format") or {}).get("type") in ("json_object", "json_schema"),
    )


def _max_tokens(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int):
            return value
    return None


def _stops(stop: Any) -> tuple[str, ...]:
    if isinstance(stop, str):
        return (stop,)
    return tuple(s for s in stop if isinstance(s, str)) if isinstance(stop, list) else ()


def _usage_of(reply: Reply, n: int) -> dict[str, int]:
    """Usage of ``n`` choices of ``reply``: the prompt counts once, each choice's tokens count."""
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": n * reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + n * reply.completion_tokens,
    }


def _choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) else 1  # checked: absent, null, or 1..MAX_CHOICES


def _call_id(call: Call, index: int, choice: int = 0) -> str:
    return f"call_sim{call.seq}_{index}" if choice == 0 else f"call_sim{call.seq}_{choice}_{index}"


def _chat(body: dict[str, Any], behaviour: Behaviour, call: Call) -> Answer:
    reply = _chat_reply(body, behaviour)
    n = _choices(body)
    if body.get("stream") is True:
        return Answer(reply.completion_tokens, events=_chat_events(reply, call, _include_usage(body), n))

    def choice(k: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message["content"] = None
            message["tool_calls"] = [
                {"id": _call_id(call, i, k), "type": "function",
                 "function": {"name": tc.name, "arguments": tc.arguments}}
                for i, tc in enumerate(reply.tool_calls)
            ]
        return {"index": k, "message": message, "logprobs": None, "finish_reason": _FINISH[reply.finish]}

    return Answer(
        reply.completion_tokens,
        body=orjson.dumps(
            {
                "id": f"chatcmpl-sim{call.seq}",
                "object": "chat.completion",
                "created": call.created,
                "model": call.model,
                "choices": [choice(k) for k in range(n)],
                "usage": _usage_of(reply, n),
            }
        ),
    )


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _chat_events(reply: Reply, call: Call, include_usage: bool, n: int = 1) -> tuple[Event, ...]:
    head = {
        "id": f"chatcmpl-sim{call.seq}",
        "object": "chat.completion.chunk",
        "created": call.created,
        "model": call.model,
    }

    def chunk(pace: Pace, k: int, delta: dict[str, Any], finish: str | None = None) -> Event:
        choice = {"index": k, "delta": delta, "logprobs": None, "finish_reason": finish}
        data = {**head, "choices": [choice], "usage": None} if include_usage else {**head, "choices": [choice]}
        return pace, sse(orjson.dumps(data))

    def each(pace: Pace, deltas: list[dict[str, Any]], finish: str | None = None) -> list[Event]:
        """One chunk per choice (``deltas[k]`` for choice k): the first one paced, the others right after it."""
        return [chunk(pace if k == 0 else Pace.NEXT, k, delta, finish) for k, delta in enumerate(deltas)]

    events = each(Pace.NEXT, [{"role": "assistant", "content": None if reply.tool_calls else ""}] * n)
    for piece in reply.pieces:
        events += each(Pace.TOKEN, [{"content": piece}] * n)
    for i, tc in enumerate(reply.tool_calls):
        events += each(Pace.NEXT, [{"tool_calls": [{"index": i, "id": _call_id(call, i, k), "type": "function",
                                                    "function": {"name": tc.name, "arguments": ""}}]}
                                   for k in range(n)])
        for piece in tc.pieces:
            events += each(Pace.TOKEN, [{"tool_calls": [{"index": i, "function": {"arguments": piece}}]}] * n)
    events += each(Pace.NEXT, [{}] * n, _FINISH[reply.finish])
    if include_usage:
        events.append((Pace.NEXT, sse(orjson.dumps({**head, "choices": [], "usage": _usage_of(reply, n)}))))
    events.append(_DONE)
    return tuple(events)


CHAT = Endpoint(DIALECT, openai_checks.checker(openai_checks.CHAT), _chat)


# --- completions (legacy) -------------------------------------------------


def _prompt_texts(prompt: Any) -> Iterable[str]:
    """Texts of a prompt (or embeddings input): a string, strings, or token-id arrays."""
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return (" ".join(map(str, prompt)),)
    if isinstance(prompt, list):
        return tuple(p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt)
    return ()


def _completion(body: dict[str, Any], behaviour: Behaviour, call: Call) -> Answer:
    reply = text_reply(
        behaviour,
        prompt_tokens=count_words(_prompt_texts(body["prompt"])),
        max_tokens=_max_tokens(body, "max_tokens"),
        stop=_stops(body.get("stop")),
    )
    head = {"id": f"cmpl-sim{call.seq}", "object": "text_completion", "created": call.created, "model": call.model}
    n = _choices(body)
    if body.get("stream") is not True:
        choices = [{"text": reply.text, "index": k, "logprobs": None, "finish_reason": _FINISH[reply.finish]}
                   for k in range(n)]
        return Answer(reply.completion_tokens,
                      body=orjson.dumps({**head, "choices": choices, "usage": _usage_of(reply, n)}))

    def chunk(k: int, text: str, finish: str | None = None) -> bytes:
        choice = {"text": text, "index": k, "logprobs": None, "finish_reason": finish}
        return sse(orjson.dumps({**head, "choices": [choice]}))

    events = [(Pace.TOKEN if k == 0 else Pace.NEXT, chunk(k, piece)) for piece in reply.pieces for k in range(n)]
    events += [(Pace.NEXT, chunk(k, "", _FINISH[reply.finish])) for k in range(n)]
    if _include_usage(body):
        events.append((Pace.NEXT, sse(orjson.dumps({**head, "choices": [], "usage": _usage_of(reply, n)}))))
    events.append(_DONE)
    return Answer(reply.completion_tokens, events=tuple(events))


COMPLETIONS = Endpoint(DIALECT, openai_checks.checker(openai_checks.COMPLETIONS), _completion)


# --- embeddings -----------------------------------------------------------


def _embeddings(body: dict[str, Any], behaviour: Behaviour, call: Call) -> Answer:
    texts = _prompt_texts(body["input"])
    dimensions = body.get("dimensions")  # checked: absent, null, or 1..MAX_DIMENSIONS
    dim = dimensions if isinstance(dimensions, int) else behaviour.embedding_dim
    encode = embedding_base64 if body.get("encoding_format") == "base64" else embedding
    data = [{"object": "embedding", "index": i, "embedding": encode(text, dim)} for i, text in enumerate(texts)]
    tokens = count_words(texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return Answer(0, body=orjson.dumps({"object": "list", "data": data, "model": call.model, "usage": usage}))


EMBEDDINGS = Endpoint(DIALECT, openai_checks.checker(openai_checks.EMBEDDINGS), _embeddings)


# --- models ---------------------------------------------------------------


def model_list(models: Iterable[str]) -> bytes:
    """The ``GET /v1/models`` body."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "labgate-simulator"} for m in models]
    return orjson.dumps({"object": "list", "data": data})
