"""A fake upstream for tests, benchmarks and demos: the provider simulator.

    from labgate.testing import Behaviour, Simulator, Status

    async with Simulator(Behaviour(completion_tokens=3), models=["m"]) as sim:
        ...  # point an OpenAI or Anthropic client at sim.url

See :mod:`labgate.testing.simulator` for the request flow and
:mod:`labgate.testing.reply` for exactly what the fake model answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labgate.testing.behaviour import (
    Behaviour,
    CutStream,
    Disconnect,
    Fault,
    Hang,
    NotJSON,
    RateLimit,
    Status,
)
from labgate.testing.reply import count_words, embedding, embedding_base64, sim_text

if TYPE_CHECKING:
    from labgate.testing.simulator import Received, Simulator

__all__ = [
    "Behaviour",
    "CutStream",
    "Disconnect",
    "Fault",
    "Hang",
    "NotJSON",
    "RateLimit",
    "Received",
    "Simulator",
    "Status",
    "count_words",
    "embedding",
    "embedding_base64",
    "sim_text",
]


def __getattr__(name: str) -> object:
    # Imported on first use, so that `python -m labgate.testing.simulator` does not
    # find its module already imported by this package (runpy warns about that).
    if name in ("Received", "Simulator"):
        from labgate.testing import simulator

        return getattr(simulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
