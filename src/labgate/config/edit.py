"""Targeted edits of a config file: one value changed in place, comments and layout kept.

``labgate experiment start|pause|stop`` and ``POST /admin/experiments/{name}/{action}``
change an experiment's ``status`` in ``experiments.yaml`` (config is code: the
file stays the one source of truth, and a reload applies it like any edit).
The line to change comes from the reader's key lines; the edited text must
validate (the whole config, as a reload would) before it replaces the file,
atomically (write to a temporary file, then rename).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from labgate.config.load import FILES, SINGLE_FILE, load_config
from labgate.config.problems import ConfigError, Problem
from labgate.config.reader import read_document

_STATUS = re.compile(r"^(?P<head>\s*(?:-\s+)?status\s*:\s*)(?P<value>[^#\n]*?)(?P<tail>\s*(?:#.*)?)$")
_NAME = re.compile(r"^(?P<indent>\s*(?:-\s+)?)name\s*:")


def experiments_file(config: Path) -> Path:
    """The file that holds ``experiments:`` in a config directory (or the single file itself)."""
    if config.is_dir() and not (config / SINGLE_FILE).exists():
        return config / FILES["experiments"]
    return config / SINGLE_FILE if config.is_dir() else config


def set_status(config: Path, name: str, status: str) -> str:
    """Set experiment ``name``'s status; returns the status it had. Raises :class:`ConfigError`."""
    file = experiments_file(config)
    doc = read_document(file)
    if doc.problems:
        raise ConfigError(doc.problems)
    experiments = (doc.data or {}).get("experiments") if isinstance(doc.data, dict) else None
    names = [e.get("name") for e in experiments or () if isinstance(e, dict)]
    if name not in names:
        from labgate.config.problems import closest

        hint = closest(name, [n for n in names if isinstance(n, str)], n=1)
        raise ConfigError([Problem(str(file), "experiments", f"no experiment named {name!r}",
                                   suggestion=hint[0] if hint else None)])
    index = names.index(name)
    before = str(experiments[index].get("status", "draft"))  # type: ignore[index]
    lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
    path = f"experiments[{index}]"
    at = doc.lines.get(f"{path}.status")
    if at is not None:
        match = _STATUS.match(lines[at - 1].rstrip("\n"))
        if match is None:
            raise _by_hand(file, path)
        lines[at - 1] = f"{match['head']}{status}{match['tail']}\n"
    else:
        at = doc.lines.get(f"{path}.name")
        match = _NAME.match(lines[at - 1]) if at is not None else None
        if at is None or match is None:
            raise _by_hand(file, path)
        lines.insert(at, " " * len(match["indent"]) + f"status: {status}\n")
    _replace_validated(config, file, "".join(lines))
    return before


def _by_hand(file: Path, path: str) -> ConfigError:
    return ConfigError([Problem(str(file), path, "this experiment is written in flow style ({...}); "
                                "change its `status` by hand")])


def _replace_validated(config: Path, file: Path, text: str) -> None:
    original = file.read_bytes()
    fd, temp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(temp, os.stat(file).st_mode & 0o777)
    os.replace(temp, file)
    try:
        load_config(config)
    except ConfigError:
        file.write_bytes(original)  # the edit made the config invalid: put the file back as it was
        raise
