"""Terminal output for the CLI: colours (on for a terminal, off for pipes and ``NO_COLOR``) and escaping."""

from __future__ import annotations

import os
from typing import IO


class Style:
    """Wraps text in ANSI colours when enabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: IO[str], mode: str = "auto") -> Style:
        if mode == "always":
            return cls(True)
        if mode == "never" or os.environ.get("NO_COLOR"):
            return cls(False)
        isatty = getattr(stream, "isatty", None)
        return cls(bool(isatty and isatty()))

    def _paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def red(self, text: str) -> str:
        return self._paint("31", text)

    def green(self, text: str) -> str:
        return self._paint("32", text)

    def yellow(self, text: str) -> str:
        return self._paint("33", text)

    def cyan(self, text: str) -> str:
        return self._paint("36", text)

    def bold(self, text: str) -> str:
        return self._paint("1", text)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(text: str, *, keep: str = "") -> str:
    """``text`` safe to print in a terminal: every non-printable character escaped (``\\n``, ``\\x1b``, ``\\u202e``).

    Every table and record the CLI prints passes its values through here: a model name, prompt or error
    message holding a line break would break the table's rows, and an ANSI escape sequence (``\\x1b[…``)
    could recolour, hide or rewrite what the terminal shows. ``keep`` names characters left as they are
    (``"\\n"`` where a value is printed as text over several lines).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in text)


def _escape(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
