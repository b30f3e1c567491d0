"""What the simulated model says, independent of any wire protocol.

Everything is deterministic so tests can compute the expected value:

- text: ``sim_text(n)`` == ``" sim1 sim2 … simN"``: ``n`` tokens, each one
  word with a leading space;
- tool calls: arguments ``{"query": <last user text>}``, streamed in three
  pieces (``'{"query":'``, the JSON string, ``'}'``), three tokens per call;
- prompt tokens: whitespace-separated words in all prompt text, at least 1;
- embeddings: ``embedding(text, dim)``, a unit vector seeded by a hash of the
  text, whose components are exact float32 values (so the JSON-float and
  base64 encodings decode to the same list).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from labgate.testing.behaviour import Behaviour


class Finish(enum.Enum):
    """Why generation ended; each dialect names these its own way."""

    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    input: dict[str, Any]

    @property
    def arguments(self) -> str:
        """The arguments as OpenAI sends them: one JSON string."""
        return "".join(self.pieces)

    @property
    def pieces(self) -> tuple[str, ...]:
        """The argument JSON as it streams, one token per piece."""
        ((key, value),) = self.input.items()
        return ("{" + orjson.dumps(key).decode() + ":", orjson.dumps(value).decode(), "}")


@dataclass(frozen=True, slots=True)
class Reply:
    """One generated answer: text tokens or tool calls, plus usage and why it ended."""

    pieces: tuple[str, ...]
    finish: Finish
    prompt_tokens: int
    stop_sequence: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + 3 * len(self.tool_calls)


@lru_cache(maxsize=64)
def sim_pieces(n: int) -> tuple[str, ...]:
    """The ``n`` generated tokens: ``(" sim1", " sim2", …)``."""
    return tuple(f" sim{i}" for i in range(1, n + 1))


def sim_text(n: int) -> str:
    """The text the simulator generates for ``n`` tokens: ``" sim1 sim2 … simN"``."""
    return "".join(sim_pieces(n))


@lru_cache(maxsize=64)
def reply_pieces(text: str) -> tuple[str, ...]:
    """Fixed reply text as tokens: split before each space, so the pieces join back exactly."""
    head, *rest = text.split(" ")
    return ((head,) if head else ()) + tuple(" " + word for word in rest)


def count_words(texts: Iterable[str]) -> int:
    """Prompt tokens: whitespace-separated words over all texts, at least 1."""
    return max(1, sum(len(text.split()) for text in texts))


def text_reply(
    behaviour: Behaviour,
    *,
    prompt_tokens: int,
    max_tokens: int | None,
    stop: Sequence[str] = (),
    json_mode: bool = False,
) -> Reply:
    """The text answer: generated (or fixed) tokens, capped by ``max_tokens``, cut at a stop sequence."""
    if behaviour.reply is not None:
        pieces = reply_pieces(behaviour.reply)
    else:
        pieces = sim_pieces(behaviour.completion_tokens)
        if json_mode:
            pieces = _as_json_object(pieces)
    finish = Finish.STOP
    if max_tokens is not None and max_tokens < len(pieces):
        pieces, finish = pieces[:max_tokens], Finish.LENGTH
    if stop:
        cut = _cut_at_stop(pieces, stop)
        if cut is not None:
            pieces, matched = cut
            return Reply(pieces, Finish.STOP_SEQUENCE, prompt_tokens, stop_sequence=matched)
    return Reply(pieces, finish, prompt_tokens)


def tool_reply(names: Sequence[str], *, query: str, prompt_tokens: int) -> Reply:
    """A reply that calls each named tool with ``{"query": query}``."""
    calls = tuple(ToolCall(name, {"query": query}) for name in names)
    return Reply((), Finish.TOOL_CALLS, prompt_tokens, tool_calls=calls)


def _as_json_object(pieces: tuple[str, ...]) -> tuple[str, ...]:
    """``{"reply":"sim1 sim2 …"}``, still one piece per token."""
    if not pieces:
        return ('{"reply":""}',)
    words = [piece.lstrip(" ") if i == 0 else piece for i, piece in enumerate(pieces)]
    words[0] = '{"reply":"' + words[0]
    words[-1] += '"}'
    return tuple(words)


def _cut_at_stop(pieces: tuple[str, ...], stop: Sequence[str]) -> tuple[tuple[str, ...], str] | None:
    """The pieces before the earliest stop sequence (and which one matched), or None."""
    text = "".join(pieces)
    found = [(text.find(s), s) for s in stop if s and s in text]
    if not found:
        return None
    at, matched = min(found)
    kept: list[str] = []
    start = 0
    for piece in pieces:
        if start >= at:
            break
        kept.append(piece[: at - start])
        start += len(piece)
    return tuple(kept), matched


@lru_cache(maxsize=4096)
def _vector(text: str, dim: int) -> array[float]:
    ints = array("h")
    ints.frombytes(hashlib.shake_256(text.encode()).digest(2 * dim))
    if sys.byteorder == "big":
        ints.byteswap()
    norm = sum(i * i for i in ints) ** 0.5 or 1.0
    return array("f", (i / norm for i in ints))


def embedding(text: str, dim: int) -> list[float]:
    """The simulator's embedding of ``text``: a deterministic unit vector of float32 values."""
    return _vector(text, dim).tolist()


def embedding_base64(text: str, dim: int) -> str:
    """``embedding(text, dim)`` as OpenAI's ``encoding_format: "base64"`` sends it (little-endian float32)."""
    vector = _vector(text, dim)
    if sys.byteorder == "big":
        vector = array("f", vector)
        vector.byteswap()
    return base64.b64encode(vector.tobytes()).decode()
