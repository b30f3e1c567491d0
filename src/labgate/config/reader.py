"""Read one config file into plain data: bytes → UTF-8 text → YAML → Python values.

Every way a file can fail to read becomes a :class:`Problem` naming the file
and where in it (line, and the byte for an encoding error); nothing here
raises. A file larger than :data:`MAX_FILE_BYTES` is refused unread. Besides
what PyYAML checks, a key given twice in one mapping is an error (PyYAML keeps
the last one silently, so the first provider of that name would be lost), and
a document whose aliases would expand past :data:`MAX_NODES` values is refused
(an alias "bomb" would otherwise hang the ``${VAR}`` substitution and the
validation that walk the expanded tree).

Besides the data, a read returns the line of each key path (``providers.local.models[0]``),
so that schema problems found later can say where they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from labgate.config.problems import Problem

MAX_NODES = 100_000  # values in one file after aliases are expanded; a real config has a few hundred
MAX_FILE_BYTES = 8 * 1024 * 1024  # a real config file is a few KiB
_MERGE = "tag:yaml.org,2002:merge"
_BOMS = {b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16", b"\xff\xfe\x00\x00": "UTF-32"}


@dataclass(slots=True)
class Document:
    """What one file held: its data (``None`` when empty or unreadable), key lines, and problems."""

    data: Any = None
    lines: dict[str, int] = field(default_factory=dict)  # key path → 1-based line
    problems: list[Problem] = field(default_factory=list)
    empty: bool = False  # nothing but whitespace and comments


def key_path(prefix: str, key: object) -> str:
    """``providers`` + ``local`` → ``providers.local``; ``models`` + 0 → ``models[0]``."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{prefix}[{key}]"
    text = str(key)
    if not text.isprintable():
        text = '"' + text.encode("unicode_escape").decode("ascii") + '"'
    elif not text or text != text.strip() or " " in text:  # shown quoted, so that it can be seen
        text = f'"{text}"'
    return f"{prefix}.{text}" if prefix else text


def line_of(path: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``path``, or of its nearest parent that has one."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def read_document(file: Path) -> Document:
    """Read, decode and parse ``file``; problems instead of exceptions."""
    doc = Document()
    name = str(file)
    try:
        data = _read_at_most(file, MAX_FILE_BYTES + 1)
    except OSError as exc:
        doc.problems.append(Problem(name, "", f"cannot read the file: {exc.strerror or exc}"))
        return doc
    if len(data) > MAX_FILE_BYTES:
        doc.problems.append(Problem(name, "", f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; "
                                    "a config file is a few KiB"))
        return doc
    text = decode(data, name, doc.problems)
    if text is None:
        return doc
    parse(text, name, doc)
    return doc


def _read_at_most(file: Path, limit: int) -> bytes:
    """The file's first ``limit`` bytes, read in chunks (a FIFO or device has no size to check first)."""
    chunks: list[bytes] = []
    total = 0
    with file.open("rb") as f:
        while total < limit and (chunk := f.read(min(65536, limit - total))):
            chunks.append(chunk)
            total += len(chunk)
    return b"".join(chunks)


def decode(data: bytes, file: str, problems: list[Problem]) -> str | None:
    """The file's text; config files are UTF-8 (a UTF-8 byte order mark is allowed)."""
    for bom, encoding in sorted(_BOMS.items(), key=lambda kv: -len(kv[0])):
        if data.startswith(bom):
            problems.append(Problem(file, "", f"the file is {encoding} text; config files must be UTF-8",
                                    line=1))
            return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[start:exc.start].decode("utf-8", "replace")) + 1  # in characters, as editors count
        problems.append(Problem(file, "", f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, column "
                                f"{column} (byte {exc.start}); config files must be UTF-8", line=line))
        return None


def parse(text: str, file: str, doc: Document) -> None:
    """YAML → data, with duplicate keys and alias bombs refused."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character first
        node = loader.get_single_node()
        if node is None:
            doc.empty = True
            return
        if _Walk(file, doc).visit(node, "") > MAX_NODES:
            doc.problems.append(Problem(file, "", f"the file expands to more than {MAX_NODES} values "
                                        "(YAML aliases repeated too often)"))
        if doc.problems:
            return
        doc.data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = exc.problem or exc.context or "cannot parse"
        if exc.context and what.startswith("but "):  # "expected a single document…, but found another"
            what = f"{exc.context}, {what}"
        doc.problems.append(Problem(file, "", f"invalid YAML: {where}{what}",
                                    line=mark.line + 1 if mark else None))
    except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
        line = text.count("\n", 0, getattr(exc, "position", 0) or 0) + 1
        doc.problems.append(Problem(file, "", f"invalid YAML: line {line}: {_reason(exc)}", line=line))
    except RecursionError:
        doc.problems.append(Problem(file, "", "invalid YAML: nested too deeply"))
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp like 2024-13-45
        doc.problems.append(Problem(file, "", f"invalid YAML value: {exc}"))
    finally:
        if loader is not None:
            loader.dispose()


def _reason(exc: yaml.YAMLError) -> str:
    character = getattr(exc, "character", None)
    if isinstance(character, int):
        return f"the character U+{character:04X} is not allowed in YAML"
    return str(exc).splitlines()[0]


class _Walk:
    """One pass over the YAML nodes: duplicate keys, each key's line, and the expanded size."""

    def __init__(self, file: str, doc: Document) -> None:
        self.file = file
        self.doc = doc
        self.sizes: dict[int, int] = {}  # node id → values under it, aliases expanded

    def visit(self, node: Node, path: str) -> int:
        """The number of values under ``node`` once aliases are expanded (each node is walked once)."""
        known = self.sizes.get(id(node))
        if known is not None:  # an alias: counted again, not walked again
            return known
        self.sizes[id(node)] = 1
        size = 1
        if isinstance(node, MappingNode):
            size += self._mapping(node, path)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                size += self.visit(item, key_path(path, i))
        self.sizes[id(node)] = size
        return size

    def _mapping(self, node: MappingNode, path: str) -> int:
        size = 0
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                size += self.visit(value_node, path)
                continue
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            here = key_path(path, key) if key is not None else path
            line = key_node.start_mark.line + 1
            if key is not None:
                if key in first:
                    self.doc.problems.append(Problem(
                        self.file, here, f"duplicate key `{key}` (first at line {first[key]}, again at line "
                        f"{line}); YAML would keep only the last one", line=line))
                else:
                    first[key] = line
                    self.doc.lines.setdefault(here, line)
            size += 1 + self.visit(value_node, here)
        return size
