"""``labgate ports``, ``discover``, ``import``/``export litellm``, ``backup`` and ``validate --check-*``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from labgate.cli.main import main
from labgate.testing import Simulator

MIGRATE = Path(__file__).resolve().parents[1] / "config" / "migrate" / "litellm"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(models=["llama3.1:8b", "qwen2.5-coder:7b"]).run_in_thread() as running:
        yield running


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def config_dir(tmp_path: Path, sim: Simulator, *, ports: str = "", models: str = "[llama3.1:8b]") -> Path:
    (tmp_path / "providers.yaml").write_text(
        f"providers:\n  ollama:\n    type: ollama\n    base_url: {sim.url}\n    models: {models}\n")
    if ports:
        (tmp_path / "ports.yaml").write_text(ports)
    return tmp_path


def test_ports_shows_state_and_holder(tmp_path: Path, sim: Simulator, listening: int,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config_dir(tmp_path, sim, ports=f"ports:\n  engine: {{port: {listening}, required: true}}\n"
                                    f"  ollama: {{port: {sim.port}, process: ollama, required: true}}\n")
    assert main(["ports", "--config", str(tmp_path), "--json", "--color", "never"]) == 1  # ollama: wrong process
    report = orjson.loads(capsys.readouterr().out)["ports"]
    assert [(p["name"], p["state"], p["required"]) for p in report] == [
        ("engine", "listening", True), ("ollama", "listening", True)]
    assert report[0]["problems"] == []
    assert "not by 'ollama'" in report[1]["problems"][0]["message"]
    assert main(["ports", "--config", str(tmp_path), "--port", str(listening), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["SERVICE", "PORT", "PROTO", "REQ", "STATE", "PROCESS", "HEALTH"]
    assert f"engine   {listening}" in out and "1 port(s), 0 problem(s)" in out


def test_ports_required_fails_when_a_required_service_is_down(tmp_path: Path, sim: Simulator,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    config_dir(tmp_path, sim, ports=f"ports:\n  redis: {{port: {free}, protocol: redis, required: true}}\n"
                                    "  ui: {port: 5001}\n")
    assert main(["ports", "--config", str(tmp_path), "--required", "--color", "never"]) == 1
    out = capsys.readouterr().out
    assert "error: " in out and "required service 'redis' is not listening" in out and "\nui " not in out


def test_validate_check_ports_and_check_providers(tmp_path: Path, sim: Simulator,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config_dir(tmp_path, sim, models="[llama3.1:8b, qwen2.5-coder:7]",
               ports="ports:\n  a: {port: 8001}\n  b: {port: 8001}\n")
    assert main(["validate", "--config", str(tmp_path)]) == 0  # a conflict is only a warning here
    assert "warning: " in capsys.readouterr().out
    assert main(["validate", "--config", str(tmp_path), "--check-ports", "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert [(e["path"], e["message"]) for e in report["errors"]] == [("ports.b.port",
                                                                      "port 8001 is also registered to 'a'")]
    (tmp_path / "ports.yaml").unlink()
    assert main(["validate", "--config", str(tmp_path), "--check-providers", "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert [(e["path"], e["suggestion"]) for e in report["errors"]] == [("providers.ollama.models[1]",
                                                                         "qwen2.5-coder:7b")]


def test_discover_prints_providers_yaml(sim: Simulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["discover", "--engine", f"ollama:{sim.port}", "--timeout", "2"]) == 0
    out = capsys.readouterr().out
    doc = yaml.safe_load(out)
    entry = doc["providers"][f"ollama_{sim.port}"]
    assert entry == {"type": "ollama", "base_url": sim.url,
                     "models": [{"name": "llama3.1:8b", "quantization": "Q4_K_M"},
                                {"name": "qwen2.5-coder:7b", "quantization": "Q4_K_M"}]}
    assert "GB, 1B parameters, sim" in out and "# labgate discover:" in out
    assert main(["discover", "--engine", f"ollama:{sim.port}", "--json"]) == 0
    found = orjson.loads(capsys.readouterr().out)
    assert [f["details"][0]["quantization"] for f in found if f["port"] == sim.port] == ["Q4_K_M"]


def test_import_writes_valid_files_and_export_reads_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "imported"
    assert main(["import", "litellm", str(MIGRATE / "unified-backend.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["gateway.yaml", "model-mappings.yaml", "providers.yaml"]
    assert "12 note(s), 9 setting(s) not carried over" in printed
    assert main(["import", "litellm", str(MIGRATE / "unified-backend.yaml"), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["validate", "--config", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", "litellm", "--config", str(out)]) == 0
    exported = yaml.safe_load(capsys.readouterr().out)
    assert exported["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    assert exported["router_settings"]["fallbacks"][0] != {"qwen-7b": ["qwen-7b"]}


def test_backup_commands(tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c").mkdir()
    config = config_dir(tmp_path / "c", sim)
    assert main(["backup", "create", "--config", str(config)]) == 0
    assert main(["backup", "list", "--config", str(config), "--json"]) == 0
    capsys.readouterr()
    assert main(["backup", "list", "--config", str(config), "--json"]) == 0
    [made] = orjson.loads(capsys.readouterr().out)
    assert made["reason"] == "manual" and made["files"] == ["providers.yaml"]
    assert main(["backup", "verify", "--config", str(config)]) == 0
    (config / "providers.yaml").write_text("providers: {}\n")
    assert main(["backup", "restore", made["name"], "--config", str(config)]) == 0
    assert "llama3.1:8b" in (config / "providers.yaml").read_text()
    out = capsys.readouterr().out
    assert "the current config is kept as backup" in out and "labgate reload --config" in out
    assert main(["backup", "restore", "nope", "--config", str(config)]) == 1
