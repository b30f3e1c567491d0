"""``${VAR}`` references in config values: substitution, and the problems it finds.

Substitution runs on parsed values (so a reference in a comment never
counts, and a variable's value is always text, never YAML). A reference is
``${NAME}`` or ``${NAME:-default}``; ``NAME`` has letters, digits and ``_``
and does not start with a digit. Anything else written as ``${...}`` is an
error naming the key that holds it, as is a variable that is not set.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from labgate.config.problems import Problem
from labgate.config.reader import key_path

M = TypeVar("M", bound=BaseModel)
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_VALID = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def substitute(value: Any, env: Mapping[str, str], *, file: str, lines: Mapping[str, int],
               path: str = "") -> tuple[Any, list[Problem]]:
    """``value`` with every reference replaced, and a problem per bad or unset reference."""
    problems: list[Problem] = []
    return _walk(value, env, path, file, lines, problems), problems


def _walk(value: Any, env: Mapping[str, str], path: str, file: str, lines: Mapping[str, int],
          problems: list[Problem]) -> Any:
    if isinstance(value, str):
        return _text(value, env, path, file, lines, problems) if "${" in value else value
    if isinstance(value, dict):
        return {k: _walk(v, env, key_path(path, str(k)), file, lines, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, env, key_path(path, i), file, lines, problems) for i, v in enumerate(value)]
    return value


def _text(value: str, env: Mapping[str, str], path: str, file: str, lines: Mapping[str, int],
          problems: list[Problem]) -> str:
    line = lines.get(path)

    def one(match: re.Match[str]) -> str:
        valid = _VALID.fullmatch(match.group(1))
        if valid is None:
            problems.append(Problem(file, path, f"`{match.group(0)}` is not a valid variable reference: write "
                                    "`${NAME}` or `${NAME:-default}`, where NAME has letters, digits and `_` "
                                    "and does not start with a digit", line=line))
            return ""
        name, default = valid.group(1), valid.group(2)
        found = env.get(name)
        if found or (found is not None and default is None):
            return found
        if default is None:  # as in the shell, `:-` also stands in for an empty value
            problems.append(Problem(file, path, f"environment variable ${{{name}}} is not set", line=line))
        return default or ""

    out = _REFERENCE.sub(one, value)
    if "${" in _REFERENCE.sub("", value):
        problems.append(Problem(file, path, "`${` without a closing `}`", line=line))
    return out


class References(Mapping[str, str]):
    """An environment in which ``${VAR}`` stands for itself: to see which values come from it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def __getitem__(self, name: str) -> str:
        if name not in self._env:
            raise KeyError(name)
        return "${" + name + "}"

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def keep_references(model: M, written: Any) -> M:
    """``model`` with each value that came from a ``${VAR}`` reference put back as written.

    For output that must name the variable rather than carry its value (``labgate
    export litellm``). The copy is not validated again: a ``${PORT}`` in a number
    field stays a string. ``written`` is the file's data read with references kept.
    """
    if not isinstance(written, dict):
        return model
    update: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        key = info.alias if info.alias in written else name
        if key not in written:
            continue
        value = getattr(model, name)
        kept = _keep(value, written[key])
        if kept is not value:
            update[name] = kept
    return model.model_copy(update=update) if update else model


def _keep(value: Any, written: Any) -> Any:
    if isinstance(written, str) and "${" in written:
        if isinstance(value, BaseModel):  # the short form of a model: `- ${MODEL}` for `{name: ...}`
            return value.model_copy(update={"name": written}) if "name" in type(value).model_fields else value
        return written
    if isinstance(value, BaseModel):
        return keep_references(value, written)
    if isinstance(value, tuple | list) and isinstance(written, list) and len(value) == len(written):
        items = [_keep(v, w) for v, w in zip(value, written, strict=True)]
        changed = any(a is not b for a, b in zip(items, value, strict=True))
        return type(value)(items) if changed else value
    if isinstance(value, dict) and isinstance(written, dict):
        kept = {k: _keep(v, written.get(k)) for k, v in value.items()}
        return kept if any(kept[k] is not value[k] for k in value) else value
    return value
