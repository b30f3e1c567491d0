"""The shape every simulated route has, whatever its wire protocol.

A wire module (``openai_wire``, ``anthropic_wire``) describes each route as
an :class:`Endpoint`: how it checks a request and answers it, and the
:class:`Dialect` it renders errors in. The simulator owns everything else
(auth order, model check, timing, faults, recording).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labgate.testing.behaviour import Behaviour


class Pace(enum.Enum):
    """When the simulator may write a stream event."""

    HEAD = "head"  # together with the response head (before time-to-first-token)
    TOKEN = "token"  # one generated token: the first after ttft_s, the next at tokens_per_s
    NEXT = "next"  # right after the previous event (but never before time-to-first-token)


Event = tuple[Pace, bytes]


@dataclass(frozen=True, slots=True)
class Call:
    """What an answer may depend on besides the body and behaviour."""

    seq: int  # the simulator's request number, for deterministic ids
    model: str
    created: int  # unix seconds


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole JSON body, or the SSE events of a stream; ``tokens`` paces a whole body."""

    tokens: int
    body: bytes = b""
    events: tuple[Event, ...] | None = None


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one API family words its errors and checks its key."""

    # (status, message, code, param) -> the error envelope
    error: Callable[[int, str, str | None, str | None], bytes]
    # (headers, expected key) -> why the request is not authorised, or None
    denied: Callable[[Mapping[str, str], str], str | None]
    # model name -> (message, code) of the 404
    unknown_model: Callable[[str], tuple[str, str | None]]
    # the first event of a stream whose data is not JSON
    garbage_event: bytes


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One simulated route: its dialect, its request check, and its answer."""

    dialect: Dialect
    # (body, headers) -> (message, param) of a 400, or None when the request is well-formed
    invalid: Callable[[dict[str, Any], Mapping[str, str]], tuple[str, str | None] | None]
    answer: Callable[[dict[str, Any], Behaviour, Call], Answer]


def sse(data: bytes, event: str | None = None) -> bytes:
    """One Server-Sent Event."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
