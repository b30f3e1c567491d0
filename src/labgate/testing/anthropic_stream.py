"""The message an Anthropic Messages stream adds up to, read from its events as the API documents them.

Tests compare streams by what a client ends up with. This reads the wire events themselves (the
``data`` of each SSE event, parsed), so no test depends on an SDK's private accumulator:

- ``message_start`` holds the message, with empty ``content``;
- ``content_block_start`` appends a block; ``content_block_delta`` extends block ``index``:
  ``text_delta`` its text, ``thinking_delta`` its thinking, ``signature_delta`` sets its signature,
  ``citations_delta`` appends a citation, ``input_json_delta`` adds to the block's JSON text, whose
  value is its ``input`` (parsed at the end, as clients parse the text so far on every delta: a
  fragment that comes after its block's ``content_block_stop`` still counts);
- ``message_delta`` sets ``stop_reason`` and ``stop_sequence``, and its usage counts (cumulative
  totals) overwrite the message's.

A delta of the wrong kind for its block, or an event before ``message_start``, is a ``ValueError``:
a client would be left with a broken message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

_DELTA_FIELD = {"text_delta": ("text", "text"), "thinking_delta": ("thinking", "thinking")}


def accumulate(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The final message of a stream's events; ``None`` values are left out, at every level."""
    message: dict[str, Any] | None = None
    json_text: dict[int, str] = {}
    for event in events:
        kind = event["type"]
        if message is None:
            if kind != "message_start":
                raise ValueError(f"{kind} before message_start")
            message = orjson.loads(orjson.dumps(event["message"]))  # a copy the events do not share
            continue
        if kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            _apply(message["content"][event["index"]], event["delta"], json_text, event["index"])
        elif kind == "message_delta":
            delta = event["delta"]
            message["stop_reason"] = delta.get("stop_reason")
            message["stop_sequence"] = delta.get("stop_sequence")
            usage = message.setdefault("usage", {})
            usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
    if message is None:
        raise ValueError("no message_start")
    for index, text in json_text.items():
        try:
            message["content"][index]["input"] = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError(f"block {index}'s input is not JSON: {text!r}") from None
    return _without_none(message)


def _apply(block: dict[str, Any], delta: dict[str, Any], json_text: dict[int, str], index: int) -> None:
    kind = delta["type"]
    if kind in _DELTA_FIELD:
        field, block_type = _DELTA_FIELD[kind]
        if block["type"] != block_type:
            raise ValueError(f"{kind} on a {block['type']} block")
        block[field] = block.get(field, "") + delta[field]
    elif kind == "signature_delta":
        if block["type"] != "thinking":
            raise ValueError(f"signature_delta on a {block['type']} block")
        block["signature"] = delta["signature"]
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta["citation"])
    elif kind == "input_json_delta":
        if "input" not in block:
            raise ValueError(f"input_json_delta on a {block['type']} block")
        json_text[index] = json_text.get(index, "") + delta["partial_json"]
    else:
        raise ValueError(f"unknown delta type {kind!r}")


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
