"""How a simulated upstream behaves: timing, sizes, and the faults it injects.

A :class:`Behaviour` applies to the whole simulator or to one model name, and
is replaced whole at runtime (``sim.set(...)``); use
``dataclasses.replace(b, fault=...)`` to derive one from another.

Faults are small frozen dataclasses, one per way an upstream goes wrong:

    Status(code)          an error status with a body in the route's dialect
    RateLimit(retry_after) 429 with a ``retry-after`` header
    Hang()                accept the request and never answer (the client times out)
    NotJSON()             200 whose body (or first stream event) is not JSON
    Disconnect()          close the connection before sending any byte
    CutStream(after)      close the connection after ``after`` stream events
                          (non-stream: after half of the body), leaving the
                          chunked body unterminated
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Status:
    """Answer with this HTTP status and an error envelope in the route's dialect."""

    code: int = 500
    message: str = "simulated upstream error"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Answer 429 with ``retry-after`` (seconds) and a rate-limit error envelope."""

    retry_after: float = 1.0


@dataclass(frozen=True, slots=True)
class Hang:
    """Accept the request and never answer, until the client gives up or the simulator stops."""


@dataclass(frozen=True, slots=True)
class NotJSON:
    """Answer 200 with a body that is not JSON; a stream's first event is not JSON either."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection before sending a single byte."""


@dataclass(frozen=True, slots=True)
class CutStream:
    """Close the connection mid-body: after ``after`` SSE events, or half of a non-stream body."""

    after: int = 1


Fault = Status | RateLimit | Hang | NotJSON | Disconnect | CutStream


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Timing, output size and faults of a simulated upstream.

    Timing: ``latency_s`` passes before the response head; a stream's first
    token follows the head after ``ttft_s``, the next ones at ``tokens_per_s``
    (0: no pauses at all). A non-stream answer waits the whole generation
    time (latency + ttft + (tokens - 1) / tokens_per_s) before its head.

    ``reply`` replaces the generated text (``" sim1 sim2 …"``) with fixed
    text, split into tokens at spaces. ``parallel_tool_calls`` is how many of
    the request's tools a tool-calling reply calls.

    A ``fault`` hits every request unless narrowed: only the first
    ``fail_first_n`` requests (counted since this behaviour was ``set``),
    and of those each with probability ``fail_rate``.
    """

    latency_s: float = 0.0
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    completion_tokens: int = 8
    embedding_dim: int = 16
    reply: str | None = None
    parallel_tool_calls: int = 1
    fault: Fault | None = None
    fail_first_n: int | None = None
    fail_rate: float = 1.0

    def __post_init__(self) -> None:
        for name in ("latency_s", "ttft_s", "tokens_per_s", "completion_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"Behaviour.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.embedding_dim < 1 or self.parallel_tool_calls < 1:
            raise ValueError("Behaviour.embedding_dim and parallel_tool_calls must be >= 1")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"Behaviour.fail_rate must be within [0, 1], got {self.fail_rate!r}")
        if self.fault is None and (self.fail_first_n is not None or self.fail_rate != 1.0):
            raise ValueError("Behaviour.fail_first_n / fail_rate need a fault to inject")

    @property
    def token_interval(self) -> float:
        """Seconds between two streamed tokens (0 when unthrottled)."""
        return 1.0 / self.tokens_per_s if self.tokens_per_s else 0.0
