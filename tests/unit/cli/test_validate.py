"""``labgate validate``: exit codes, text and JSON reports."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from labgate.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def write(directory: Path, **files: str) -> Path:
    for name, text in files.items():
        (directory / name.replace("_", "-").replace("-yaml", ".yaml")).write_text(text)
    return directory


def test_valid_example_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(EXAMPLES / "lab")]) == 0
    assert capsys.readouterr().out.strip().endswith("valid (0 error(s), 0 warning(s))")


def test_invalid_config_exits_one_with_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, providers_yaml="""
providers:
  ollama:
    type: ollama
    models: [qwen2.5-coder:7b]
""", model_mappings_yaml="""
routing:
  exact_matches:
    coder:
      provider: ollama
      model: qwen2.5-coder:7b
      fallback_chain: [qwen2.5-coder:7]
""")
    assert main(["validate", "--config", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert ("error: " + str(tmp_path / "model-mappings.yaml")
            + ":7: `routing.exact_matches.coder.fallback_chain[0]`: 'qwen2.5-coder:7' is not a known model, "
            "provider/model pair or provider (did you mean `qwen2.5-coder:7b`?)") in out
    assert out.strip().endswith("INVALID (1 error(s), 0 warning(s))")


def test_json_report_for_ci(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, providers_yaml="""
providers:
  local:
    type: llama_cpp
    base_ulr: http://127.0.0.1:8080
""")
    assert main(["validate", "--config", str(tmp_path), "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report == {
        "config": str(tmp_path), "valid": False, "warnings": [],
        "errors": [{"severity": "error", "file": str(tmp_path / "providers.yaml"),
                    "path": "providers.local.base_ulr", "message": "unknown key", "suggestion": "base_url", "line": 5}],
    }


def test_missing_directory_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(tmp_path / "nope"), "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["errors"][0]["message"] == "no such file or directory"
