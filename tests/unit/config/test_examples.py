"""Every example config in ``examples/`` loads and passes the cross-file checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from labgate.config.load import load_config

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_example_is_valid(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_MASTER_KEY", "sk-example")
    config = load_config(EXAMPLES / example)
    assert config.providers, f"examples/{example} configures no provider"
