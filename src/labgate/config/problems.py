"""Config problems: what is wrong, in which file, at which key, and what was probably meant."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    path: str  # dotted key path inside the file, e.g. ``providers.ollama.base_url``
    message: str
    severity: Literal["error", "warning"] = "error"
    suggestion: str | None = None
    line: int | None = None  # 1-based line in ``file``, when known

    def __str__(self) -> str:
        file = f"{self.file}:{self.line}" if self.line else self.file
        where = f"{file}: `{self.path}`" if self.path else file
        hint = f" (did you mean `{self.suggestion}`?)" if self.suggestion else ""
        return f"{self.severity}: {where}: {self.message}{hint}"

    def as_dict(self) -> dict[str, str | int | None]:
        return {"severity": self.severity, "file": self.file, "path": self.path,
                "message": self.message, "suggestion": self.suggestion, "line": self.line}


class ConfigError(Exception):
    """The config did not validate; ``problems`` says why (errors and warnings)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid config")


def closest(name: str, candidates: Iterable[str], *, n: int = 3) -> list[str]:
    """The names most like ``name`` (case-insensitive), best first."""
    pool = {c.lower(): c for c in candidates}
    return [pool[m] for m in difflib.get_close_matches(name.lower(), list(pool), n=n, cutoff=0.6)]
