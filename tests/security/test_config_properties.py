"""Property tests: whatever the files hold, loading gives a config or problems, never a traceback.

Random YAML trees (mappings, lists, scalars; keys drawn from the real schema and
from noise), random bytes, invalid UTF-8 spliced into valid YAML, and
duplicated keys go into each config file. The loader must return a config or
raise ``ConfigError`` whose problems each name the file (and the key path, or
the line for a file-level problem), in plain words, once each.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgate.config.load import FILES, SINGLE_FILE, load_config
from labgate.config.problems import ConfigError, Problem
from labgate.config.reader import read_document
from labgate.providers.registry import TYPES

KEYS = ["providers", "type", "base_url", "models", "name", "alias", "status", "timeout_s", "priority", "headers",
        "routing", "exact_matches", "patterns", "aliases", "fallbacks", "provider", "fallback_chain", "server",
        "port", "host", "workers", "auth", "store", "config", "drain_timeout_s", "ports", "protocol", "local",
        "context_length", "tags", "pricing", "input_per_1m", "load_balancing", "deployments", "weight"]
TEXT = st.one_of(st.text(max_size=16), st.sampled_from(
    [*TYPES, "http://127.0.0.1:9", "${LAB_URL}", "${UNSET_VAR}", "${bad-name}", "${", "a/b", "", " ", "active"]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), TEXT)
KEY = st.one_of(st.sampled_from(KEYS), st.text(string.ascii_letters + "/ ._-", max_size=8), st.integers(-3, 3))
TREES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(KEY, inner, max_size=5)), max_leaves=25)
PROVIDER = st.fixed_dictionaries({"type": st.one_of(st.sampled_from(list(TYPES)), TREES)},
                                 optional={k: TREES for k in ("base_url", "models", "timeout_s", "status", "modles")})
CONFIG_LIKE = st.one_of(
    st.fixed_dictionaries({"providers": st.dictionaries(st.one_of(TEXT, st.sampled_from(["local", "p1"])),
                                                        st.one_of(PROVIDER, TREES), max_size=3)}),
    st.dictionaries(st.sampled_from(KEYS), TREES, max_size=4), TREES)
ENV = {"LAB_URL": "http://127.0.0.1:1"}
# pydantic's own words must never reach a user
INTERNALS = ("Input should", "instance of", "valid tuple", "Value error", "Field required", "pydantic",
             "dictionary", "type=", "[key]", "function-")


def _yaml(tree: Any) -> bytes:
    return yaml.safe_dump(tree, allow_unicode=True).encode()


def _duplicated(a: dict[str, Any], b: dict[str, Any], indent: int) -> bytes:
    """Two mappings' keys written into one block mapping (PyYAML would keep the last of each)."""
    lines = []
    for tree in (a, b):
        for key, value in tree.items():
            line = yaml.safe_dump({key: value}, default_flow_style=True, width=10_000).strip()
            lines.append(" " * indent + line.removeprefix("{").removesuffix("}"))
    body = "\n".join(lines)
    return (("providers:\n" + body) if indent else body).encode() + b"\n"


DOCUMENTS = st.one_of(
    CONFIG_LIKE.map(_yaml),
    st.binary(max_size=200),
    st.tuples(CONFIG_LIKE.map(_yaml), st.integers(0, 400), st.sampled_from([b"\xff", b"\xc3", b"\xe9", b"\x80\x80",
                                                                            b"\x00", b"\xef\xbb"]))
    .map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:]),
    st.tuples(st.dictionaries(st.sampled_from(["local", "p1", "type"]), SCALARS, min_size=1, max_size=3),
              st.dictionaries(st.sampled_from(["local", "p1", "type"]), SCALARS, min_size=1, max_size=3),
              st.sampled_from([0, 2])).map(lambda t: _duplicated(*t)),
)
FILES_AND_DOCS = st.dictionaries(st.sampled_from([*FILES.values(), SINGLE_FILE]), DOCUMENTS, min_size=1, max_size=3)


def _check(problems: tuple[Problem, ...], directory: Path) -> None:
    assert problems, "a ConfigError without problems"
    seen = set()
    for p in problems:
        assert p.file == str(directory) or Path(p.file).parent == directory, p
        assert p.path or p.line or p.message in (
            "the file is empty: it needs at least a `providers:` section (see docs/configuration.md)",
            f"no {FILES['providers']} (or {SINGLE_FILE}) here") or p.message.startswith(
            ("invalid YAML", "the file expands")), p
        assert p.message and not any(word in p.message for word in INTERNALS), p
        assert (p.file, p.path, p.message) not in seen, f"reported twice: {p}"
        seen.add((p.file, p.path, p.message))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=FILES_AND_DOCS)
def test_loading_gives_a_config_or_problems_naming_file_and_key(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for name, data in files.items():
            (directory / name).write_bytes(data)
        try:
            config = load_config(directory, env=ENV)
        except ConfigError as exc:
            _check(exc.problems, directory)
        else:
            assert all(p.severity == "warning" for p in config.warnings)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), DOCUMENTS))
def test_reading_any_bytes_never_raises(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "providers.yaml"
        file.write_bytes(data)
        doc = read_document(file)
    assert doc.data is None or not doc.problems
    assert all(p.file == str(file) for p in doc.problems)


@settings(max_examples=100, deadline=None)
@given(first=st.dictionaries(st.sampled_from(["local", "p1", "cloud"]), st.just({"type": "ollama"}), min_size=1),
       second=st.dictionaries(st.sampled_from(["local", "p1", "cloud"]), st.just({"type": "vllm"}), min_size=1))
def test_every_duplicate_key_is_reported_with_both_lines(first: dict[str, Any], second: dict[str, Any]) -> None:
    text = _duplicated(first, second, 2)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "providers.yaml"
        file.write_bytes(text)
        doc = read_document(file)
    lines = {name: i + 2 for i, name in enumerate(first)}
    expected = [Problem(str(file), f"providers.{name}", f"duplicate key `{name}` (first at line {lines[name]}, "
                        f"again at line {len(first) + i + 2}); YAML would keep only the last one",
                        line=len(first) + i + 2)
                for i, name in enumerate(second) if name in first]
    assert doc.problems == expected
