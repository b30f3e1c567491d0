"""Hostile or broken config files: bounded work, one plain problem each, never an exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labgate.config.load import load_config
from labgate.config.problems import ConfigError, Problem
from labgate.config.reader import MAX_FILE_BYTES, MAX_NODES


def problems_of(directory: Path, text: str | bytes, env: dict[str, str] | None = None) -> tuple[Problem, ...]:
    (directory / "providers.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(ConfigError) as info:
        load_config(directory, env=env or {})
    return info.value.problems


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^10 values
    lines.append("providers: {p: {type: ollama, models: *a9}}")
    assert problems_of(tmp_path, "\n".join(lines) + "\n") == (Problem(
        str(tmp_path / "providers.yaml"), "", f"the file expands to more than {MAX_NODES} values (YAML aliases "
        "repeated too often)"),)


def test_aliases_within_the_limit_load(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text(
        "providers:\n  a: &base {type: vllm, base_url: 'http://127.0.0.1:9', models: [m1]}\n"
        "  b: {<<: *base, base_url: 'http://127.0.0.1:8'}\n")
    config = load_config(tmp_path, env={})
    assert [(n, p.base_url) for n, p in config.providers.items()] == [
        ("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:8")]


def test_deep_nesting_is_a_problem(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "providers: " + "[" * 5000 + "]" * 5000 + "\n") == (
        Problem(str(tmp_path / "providers.yaml"), "", "invalid YAML: nested too deeply"),)


@pytest.mark.parametrize(("text", "message", "line"), [
    (b"providers: {p: {type: ollama, description: 2024-13-45}}\n", "invalid YAML value: month must be in 1..12",
     None),
    (b"providers: {}\n---\nproviders: {}\n", "invalid YAML: line 2, column 1: expected a single document in the "
     "stream, but found another document", 2),
    (b"providers:\n  p: {type: ollama}\n\x00\n", "invalid YAML: line 3: the character U+0000 is not allowed in YAML",
     3),
    (b"providers: {[a]: 1}\n", "invalid YAML: line 1, column 13: found unhashable key", 1),
    (b"- a\n- b\n", "the top level must be a mapping of keys, not a list", 1),
    (b"just text\n", "the top level must be a mapping of keys, not a single value", 1),
    (b"\xfe\xff\x00p", "the file is UTF-16 text; config files must be UTF-8", 1),
])
def test_file_level_problems_name_the_line(tmp_path: Path, text: bytes, message: str, line: int | None) -> None:
    assert problems_of(tmp_path, text) == (Problem(str(tmp_path / "providers.yaml"), "", message, line=line),)


def test_an_invisible_character_in_a_key_is_shown(tmp_path: Path) -> None:
    assert problems_of(tmp_path, b"\xef\xbb\xbf\xef\xbb\xbfproviders: {}\n") == (Problem(
        str(tmp_path / "providers.yaml"), '"\\ufeffproviders"', "unknown top-level key", suggestion="providers",
        line=1),)


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_bytes(b"\xef\xbb\xbfproviders: {p: {type: vllm, base_url: 'http://h:1'}}\n")
    assert list(load_config(tmp_path, env={}).providers) == ["p"]


def test_an_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").mkdir()  # exists, cannot be read as a file
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert info.value.problems == (
        Problem(str(tmp_path / "providers.yaml"), "", "cannot read the file: Is a directory"),)


@pytest.mark.parametrize(("value", "message"), [
    ("${bad-name}", "`${bad-name}` is not a valid variable reference: write `${NAME}` or `${NAME:-default}`, where "
     "NAME has letters, digits and `_` and does not start with a digit"),
    ("${1ST}", "`${1ST}` is not a valid variable reference: write `${NAME}` or `${NAME:-default}`, where NAME has "
     "letters, digits and `_` and does not start with a digit"),
    ("${}", "`${}` is not a valid variable reference: write `${NAME}` or `${NAME:-default}`, where NAME has "
     "letters, digits and `_` and does not start with a digit"),
    ("http://${HOST", "`${` without a closing `}`"),
    ("${UNSET_HOST}", "environment variable ${UNSET_HOST} is not set"),
])
def test_variable_problems_name_the_key_that_uses_them(tmp_path: Path, value: str, message: str) -> None:
    text = f"providers:\n  p:\n    type: vllm\n    models: [m1]\n    base_url: '{value}'\n"
    assert problems_of(tmp_path, text) == (
        Problem(str(tmp_path / "providers.yaml"), "providers.p.base_url", message, line=5),)


def test_a_variable_used_in_two_places_names_both(tmp_path: Path) -> None:
    text = "providers:\n  p: {type: vllm, base_url: '${U}'}\n  q: {type: vllm, base_url: '${U}'}\n"
    file = str(tmp_path / "providers.yaml")
    assert problems_of(tmp_path, text) == (
        Problem(file, "providers.p.base_url", "environment variable ${U} is not set", line=2),
        Problem(file, "providers.q.base_url", "environment variable ${U} is not set", line=3))


@pytest.mark.parametrize("name", ["ollama", "llama_cpp_8000", "gpu-box.lan", "A1", "x" * 64])
def test_provider_names_that_route(tmp_path: Path, name: str) -> None:
    (tmp_path / "providers.yaml").write_text(f"providers:\n  '{name}': {{type: vllm, base_url: 'http://h:1'}}\n")
    assert list(load_config(tmp_path, env={}).providers) == [name]


@pytest.mark.parametrize(("key", "shown"), [
    ("''", '""'), ("' '", '" "'), ("'a/b'", "a/b"), ("'my box'", '"my box"'), ("'-x'", "-x"), ("'.x'", ".x"),
    ("'a:b'", "a:b"), ("'é'", "é"), ("'" + "x" * 65 + "'", "x" * 65), ("42", "42"), ("null", "None"),
    ("true", "True"),
])
def test_provider_names_that_cannot_route(tmp_path: Path, key: str, shown: str) -> None:
    [problem] = problems_of(tmp_path, f"providers:\n  {key}: {{type: ollama}}\n")
    name = key.strip("'") if key.startswith("'") else {"42": 42, "null": None, "true": True}[key]
    assert problem == Problem(
        str(tmp_path / "providers.yaml"), f"providers.{shown}", f"{name!r} cannot be a provider name: use 1 to 64 "
        "letters, digits, `_`, `-` or `.`, starting with a letter or digit (no `/`, spaces or other characters)",
        line=1 if key in ("null", "true") else 2)  # YAML spells those keys differently: the parent's line


def test_unknown_type_still_reports_bad_values_and_keys_of_the_type(tmp_path: Path) -> None:
    file = str(tmp_path / "providers.yaml")
    text = "providers:\n  p:\n    type: olama\n    timeout_s: soon\n    quirks: {}\n    modles: []\n"
    assert problems_of(tmp_path, text) == (
        Problem(file, "providers.p.type", "unknown provider type 'olama'; one of: openai, openai_compatible, vllm, "
                "llama_cpp, ollama, lmstudio, anthropic, local_embeddings", suggestion="ollama", line=3),
        Problem(file, "providers.p.timeout_s", "expected a number", line=4),
        Problem(file, "providers.p.modles", "unknown key", suggestion="models", line=6))


def test_union_errors_are_one_plain_problem(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text("providers: {p: {type: vllm, base_url: 'http://h:1'}}\n")
    (tmp_path / "gateway.yaml").write_text("store:\n  writer_cpus: [a, -1]\n  retention_days: [1]\n")
    file = str(tmp_path / "gateway.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert info.value.problems == (
        Problem(file, "store.retention_days", "expected a number", line=3),
        Problem(file, "store.writer_cpus[0]", "expected a whole number", line=2),
        Problem(file, "store.writer_cpus[1]", "must be at least 0", line=2))


@pytest.mark.parametrize("entry", ["load_config", "load_files"])
def test_a_file_that_cannot_be_read_is_a_problem_for_every_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  entry: str) -> None:
    from labgate.config.reload import load_files

    file = tmp_path / "providers.yaml"
    file.write_text("providers: {p: {type: vllm, base_url: 'http://h:1'}}\n")
    real_read, real_open = Path.read_bytes, Path.open

    def denied(self: Path) -> bytes:
        if self == file:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    def denied_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == file:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr(Path, "open", denied_open)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={}) if entry == "load_config" else load_files(tmp_path)
    assert info.value.problems == (Problem(str(file), "", "cannot read the file: Permission denied"),)


def test_a_file_past_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    padding = b"# " + b"x" * 1000 + b"\n"
    data = b"providers: {p: {type: vllm, base_url: 'http://h:1'}}\n"
    data += padding * (MAX_FILE_BYTES // len(padding) + 1)
    assert problems_of(tmp_path, data) == (Problem(
        str(tmp_path / "providers.yaml"), "", "the file is larger than 8 MiB; a config file is a few KiB"),)
    (tmp_path / "providers.yaml").write_bytes(data[:MAX_FILE_BYTES])  # at the limit: read
    assert list(load_config(tmp_path, env={}).providers) == ["p"]


def test_the_encoding_error_column_counts_characters(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "providers:\n  é: {description: ".encode() + b"\xff}\n") == (Problem(
        str(tmp_path / "providers.yaml"), "", "not UTF-8: byte 0xff at line 2, column 20 (byte 31); config files "
        "must be UTF-8", line=2),)
