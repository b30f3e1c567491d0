"""config/edit.py: an experiment's status changed in place, comments kept, validated before it replaces the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from labgate.config.edit import set_status
from labgate.config.load import load_config
from labgate.config.problems import ConfigError

PROVIDERS = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [a, b]\n"
BLOCK = """# experiments
experiments:
  - name: first   # the first one
    variants: [{name: a, model: a}, {name: b, model: b}]
  - name: second
    status: paused    # waiting for traffic
    variants:
      - {name: a, model: a}
      - {name: b, model: b}
"""


def config(tmp_path: Path, experiments: str) -> Path:
    (tmp_path / "providers.yaml").write_text(PROVIDERS)
    (tmp_path / "experiments.yaml").write_text(experiments)
    return tmp_path


def test_status_changed_in_place(tmp_path: Path) -> None:
    directory = config(tmp_path, BLOCK)
    assert set_status(directory, "second", "running") == "paused"
    assert (directory / "experiments.yaml").read_text() == BLOCK.replace(
        "status: paused    # waiting", "status: running    # waiting")
    assert set_status(directory, "first", "stopped") == "draft"  # no status line: one is added under the name
    assert "  - name: first   # the first one\n    status: stopped\n" in (directory / "experiments.yaml").read_text()
    assert [e.status for e in load_config(directory).experiments.experiments] == ["stopped", "running"]


def test_unknown_name_and_flow_style_are_refused(tmp_path: Path) -> None:
    directory = config(tmp_path, BLOCK)
    with pytest.raises(ConfigError) as caught:
        set_status(directory, "secnd", "running")
    assert caught.value.problems[0].suggestion == "second"
    flow = "experiments:\n  - {name: f, variants: [{name: a, model: a}, {name: b, model: b}]}\n"
    (directory / "experiments.yaml").write_text(flow)
    with pytest.raises(ConfigError, match="flow style"):
        set_status(directory, "f", "running")
    assert (directory / "experiments.yaml").read_text() == flow


def test_an_edit_that_breaks_the_config_is_undone(tmp_path: Path) -> None:
    broken_target = BLOCK.replace("{name: b, model: b}]", "{name: b, model: zz}]")  # first's variant is unknown
    directory = config(tmp_path, broken_target.replace("  - name: first", "  - name: first\n    status: draft", 1))
    before = (directory / "experiments.yaml").read_text()
    with pytest.raises(ConfigError):
        set_status(directory, "second", "running")
    assert (directory / "experiments.yaml").read_text() == before
