"""A cache entry as stored (one opaque value: a JSON head line, then the answer's bytes), and a stream's capture."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from labgate.providers.base import Reply, Usage


@dataclass(slots=True)
class Entry:
    """One cached answer: the whole body in ``dialect``, and what the record needs from it."""

    body: bytes
    dialect: str
    endpoint: str
    created: float  # Unix time it was stored
    finish_reason: str | None
    usage: Usage | None
    provider: str | None
    deployment: str | None
    # what hits answer with, made on the first hit and reused while the entry stays decoded (state/cache.py):
    # the whole reply, and per include_usage the replayed stream's bytes (one chunk) and its event count
    reply: Reply | None = None
    streams: dict[bool, tuple[bytes, int]] | None = None

    def as_reply(self) -> Reply:
        reply = self.reply
        if reply is None:
            reply = self.reply = Reply(self.body, self.usage, self.finish_reason, self.dialect)  # type: ignore[arg-type]
        return reply

    def encode(self) -> bytes:
        usage = None if self.usage is None else [self.usage.prompt_tokens, self.usage.completion_tokens]
        meta = {"v": 1, "d": self.dialect, "e": self.endpoint, "t": self.created, "f": self.finish_reason,
                "u": usage, "p": self.provider, "dep": self.deployment}
        return orjson.dumps(meta) + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        head, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            meta = orjson.loads(head)
            usage = meta["u"]
            return cls(body, meta["d"], meta["e"], float(meta["t"]), meta["f"],
                       None if usage is None else Usage(int(usage[0]), int(usage[1])), meta["p"], meta["dep"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            return None


class Capture(list[bytes]):
    """A stream miss's relayed chunks, kept up to a byte budget; past it the stream is not stored."""

    __slots__ = ("left",)

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.left = budget

    def append(self, chunk: bytes) -> None:
        self.left -= len(chunk)
        if self.left >= 0:
            super().append(chunk)
        elif self:
            self.clear()  # over budget: nothing is kept (and nothing stored)

    @property
    def overflowed(self) -> bool:
        return self.left < 0
