"""A bad config file through every entry point that reads one: a report naming the file, key and line.

Each case is a config directory with one kind of mistake (not UTF-8, a duplicate
key, misspelt keys without `type`, names that cannot route, an empty file, a
bad or unset `${VAR}`, a value of the wrong shape) and the exact problems it
must produce. Every entry point must report those problems (whole messages)
and refuse: never a traceback, never a config half-loaded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from labgate.cli.main import main
from labgate.config import backup
from labgate.config.problems import Problem
from labgate.config.reload import ConfigSource, Reloader, load_files, loaded_from
from labgate.gateway import Gateway
from labgate.runtime import Runtime
from labgate.server.admin_config import ConfigSurface
from labgate.server.http import Request
from labgate.testing.gateway import config_from

GOOD = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m1]\n"
NAME_RULE = ("use 1 to 64 letters, digits, `_`, `-` or `.`, starting with a letter or digit (no `/`, spaces or "
             "other characters)")
TYPES = "one of: openai, openai_compatible, vllm, llama_cpp, ollama, lmstudio, anthropic, local_embeddings"
Case = Callable[[Path], tuple[dict[str, bytes], tuple[Problem, ...]]]


def non_utf8(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    return ({"providers.yaml": b"providers:\n  local: {type: ollama, description: caf\xe9}\n"},
            (Problem(str(d / "providers.yaml"), "", "not UTF-8: byte 0xe9 at line 2, column 41 (byte 51); "
                     "config files must be UTF-8", line=2),))


def utf16(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    return ({"providers.yaml": GOOD.encode("utf-16")},
            (Problem(str(d / "providers.yaml"), "", "the file is UTF-16 text; config files must be UTF-8", line=1),))


def gateway_not_utf8(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    return ({"providers.yaml": GOOD.encode(), "gateway.yaml": b"server:\n  host: \xff\xfe0.0.0.0\n"},
            (Problem(str(d / "gateway.yaml"), "", "not UTF-8: byte 0xff at line 2, column 9 (byte 16); "
                     "config files must be UTF-8", line=2),))


def duplicate_provider(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    text = ("providers:\n  local:\n    type: ollama\n  cloud:\n    type: vllm\n    base_url: http://127.0.0.1:9\n"
            "  local:\n    type: vllm\n    base_url: http://127.0.0.1:8\n")
    return ({"providers.yaml": text.encode()},
            (Problem(str(d / "providers.yaml"), "providers.local", "duplicate key `local` (first at line 2, again "
                     "at line 7); YAML would keep only the last one", line=7),))


def duplicate_section(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    text = GOOD + "routing:\n  aliases: {a: m1}\nrouting:\n  aliases: {b: m1}\n"
    return ({"labgate.yaml": text.encode()},
            (Problem(str(d / "labgate.yaml"), "routing", "duplicate key `routing` (first at line 6, again at "
                     "line 8); YAML would keep only the last one", line=8),))


def misspelt_keys(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    f = str(d / "providers.yaml")
    return ({"providers.yaml": b"providers:\n  local:\n    typ: ollama\n    timeout: 5\n    modles: [llama3]\n"},
            (Problem(f, "providers.local.type", f"`type` is required; {TYPES}", line=2),
             Problem(f, "providers.local.typ", "unknown key", suggestion="type", line=3),
             Problem(f, "providers.local.timeout", "unknown key", suggestion="timeout_s", line=4),
             Problem(f, "providers.local.modles", "unknown key", suggestion="models", line=5)))


def unroutable_names(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    f = str(d / "providers.yaml")
    text = GOOD + '  "a/b": {type: ollama}\n  "my box": {type: ollama}\n  "": {type: ollama}\n'
    return ({"providers.yaml": text.encode()},
            (Problem(f, "providers.a/b", f"'a/b' cannot be a provider name: {NAME_RULE}", line=6),
             Problem(f, 'providers."my box"', f"'my box' cannot be a provider name: {NAME_RULE}", line=7),
             Problem(f, 'providers.""', f"'' cannot be a provider name: {NAME_RULE}", line=8)))


def empty(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    return ({"providers.yaml": b"# nothing yet\n\n"},
            (Problem(str(d / "providers.yaml"), "", "the file is empty: it needs at least a `providers:` section "
                     "(see docs/configuration.md)"),))


def bad_reference(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    return ({"providers.yaml": b'providers:\n  local:\n    type: ollama\n    base_url: "${bad-name}"\n'},
            (Problem(str(d / "providers.yaml"), "providers.local.base_url", "`${bad-name}` is not a valid variable "
                     "reference: write `${NAME}` or `${NAME:-default}`, where NAME has letters, digits and `_` "
                     "and does not start with a digit", line=4),))


def unset_variable(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    return ({"providers.yaml": b"providers:\n  local:\n    type: ollama\n    base_url: ${LABGATE_TEST_UNSET_URL}\n"},
            (Problem(str(d / "providers.yaml"), "providers.local.base_url",
                     "environment variable ${LABGATE_TEST_UNSET_URL} is not set", line=4),))


def wrong_shapes(d: Path) -> tuple[dict[str, bytes], tuple[Problem, ...]]:
    f = str(d / "providers.yaml")
    text = "providers:\n  local:\n    type: ollama\n    models: [3, {name: a, context_length: 0}]\n    status: on\n"
    return ({"providers.yaml": text.encode()},
            (Problem(f, "providers.local.status", "expected 'active' or 'inactive'", line=5),
             Problem(f, "providers.local.models[0]", "expected a model name or a mapping with `name`", line=4),
             Problem(f, "providers.local.models[1].context_length", "must be at least 1", line=4)))


CASES: list[Case] = [non_utf8, utf16, gateway_not_utf8, duplicate_provider, duplicate_section, misspelt_keys,
                     unroutable_names, empty, bad_reference, unset_variable, wrong_shapes]


@pytest.fixture(params=CASES, ids=lambda c: c.__name__)
def bad(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, tuple[Problem, ...]]:
    directory = tmp_path / "config"
    directory.mkdir()
    files, problems = request.param(directory)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory, problems


def test_the_loader_reports_exactly_these_problems(bad: tuple[Path, tuple[Problem, ...]]) -> None:
    from labgate.config.problems import ConfigError

    directory, problems = bad
    with pytest.raises(ConfigError) as info:
        load_files(directory)
    assert info.value.problems == problems


def test_validate(bad: tuple[Path, tuple[Problem, ...]], capsys: pytest.CaptureFixture[str]) -> None:
    directory, problems = bad
    assert main(["validate", "--config", str(directory)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        *map(str, problems), f"{directory}: INVALID ({len(problems)} error(s), 0 warning(s))"]


def test_validate_json(bad: tuple[Path, tuple[Problem, ...]], capsys: pytest.CaptureFixture[str]) -> None:
    directory, problems = bad
    assert main(["validate", "--config", str(directory), "--json"]) == 1
    assert orjson.loads(capsys.readouterr().out) == {
        "config": str(directory), "valid": False, "errors": [p.as_dict() for p in problems], "warnings": []}


def test_serve_refuses_to_start_without_a_traceback(bad: tuple[Path, tuple[Problem, ...]]) -> None:
    directory, problems = bad
    done = subprocess.run([sys.executable, "-m", "labgate.cli.main", "serve", "--config", str(directory),
                           "--port", "0"], capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == ["labgate: the config is invalid:", *map(str, problems)]


def test_reload_command(bad: tuple[Path, tuple[Problem, ...]], capsys: pytest.CaptureFixture[str]) -> None:
    directory, problems = bad
    assert main(["reload", "--config", str(directory), "--validate-only", "--color", "never"]) == 1
    assert capsys.readouterr().out.splitlines() == [*map(str, problems), f"{directory}: INVALID — nothing applied"]


class FakeGateway:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


@pytest.mark.asyncio
async def test_a_running_gateway_refuses_the_reload(bad: tuple[Path, tuple[Problem, ...]]) -> None:
    directory, problems = bad
    config = config_from({"p": {"type": "vllm", "base_url": "http://127.0.0.1:9", "models": ["m1"]}})
    gateway = FakeGateway(Runtime.build(config))
    serving = gateway.runtime
    reloader = Reloader(gateway, loaded_from(config), source=ConfigSource(path=directory))  # type: ignore[arg-type]
    result = await reloader.reload(trigger="test")
    assert (result.status, result.problems, gateway.runtime is serving) == ("refused", problems, True)
    await gateway.runtime.aclose()


def test_backup_verify(bad: tuple[Path, tuple[Problem, ...]], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    directory, problems = bad
    made = backup.create(directory, tmp_path / "backups", reason="test")
    assert main(["backup", "verify", "--config", str(directory), "--backup-dir", str(tmp_path / "backups")]) == 1
    in_backup = [replace(p, file=p.file.replace(str(directory), str(made.path))) for p in problems]
    assert capsys.readouterr().out.splitlines() == [
        f"{made.name}: FAILED", *(f"  {p}" for p in in_backup), "1 backup(s) checked, 1 failed"]


def test_export_litellm(bad: tuple[Path, tuple[Problem, ...]], capsys: pytest.CaptureFixture[str]) -> None:
    directory, problems = bad
    assert main(["export", "litellm", "--config", str(directory)]) == 1
    out = capsys.readouterr()
    assert (out.out, out.err.splitlines()) == ("", ["labgate: the config is invalid:", *map(str, problems)])


def test_ports(bad: tuple[Path, tuple[Problem, ...]], capsys: pytest.CaptureFixture[str]) -> None:
    directory, problems = bad
    assert main(["ports", "--config", str(directory)]) == 1
    out = capsys.readouterr()
    assert (out.out, out.err.splitlines()) == ("", ["labgate: the config is invalid:", *map(str, problems)])


def surface(directory: Path) -> ConfigSurface:
    config = config_from({"p": {"type": "vllm", "base_url": "http://127.0.0.1:9", "models": ["m1"]}})
    engine = Gateway(Runtime.build(config))
    return ConfigSurface(engine, Reloader(engine, loaded_from(config), source=ConfigSource(path=directory)))


def post(path: str) -> Request:
    return Request("POST", path, "", {"x-request-id": "req-test"}, b"", "127.0.0.1")


@pytest.mark.asyncio
async def test_admin_validate_answers_422_with_the_report(bad: tuple[Path, tuple[Problem, ...]]) -> None:
    directory, problems = bad
    admin = surface(directory)
    response = await admin.validate(post("/admin/config/validate"))
    body = orjson.loads(response.body)
    assert (response.status, body["errors"]) == (422, [p.as_dict() for p in problems])
    assert re.fullmatch(r"req_[0-9a-f]{32}", dict(response.headers)["x-request-id"])  # labgate's own id
    assert body["error"]["message"] == "The config on disk is invalid."
    assert body["version"] == admin.reloader.active.version
    await admin.gateway.runtime.aclose()


@pytest.mark.asyncio
async def test_admin_validate_a_valid_config(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text(GOOD + "  q:\n    type: vllm\n    base_url: http://127.0.0.1:8\n")
    admin = surface(tmp_path)
    response = await admin.validate(post("/admin/config/validate"))
    body = orjson.loads(response.body)
    assert (response.status, body["valid"], body["version"]) == (200, True, load_files(tmp_path).version)
    assert body["changes"] == [{"op": "+", "section": "provider", "name": "q", "detail": ""}]
    assert body["active_version"] == admin.reloader.active.version != body["version"]
    await admin.gateway.runtime.aclose()
