"""``labgate``'s top level: ``--version`` and the list of commands docs/cli.md promises."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from labgate.cli.main import main

DOCS = Path(__file__).parents[3] / "docs" / "cli.md"


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert (exited.value.code, capsys.readouterr().out) == (0, f"labgate {version('labgate')}\n")


def test_version_from_the_installed_command() -> None:
    done = subprocess.run([sys.executable, "-m", "labgate", "--version"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"labgate {version('labgate')}\n", "")


def test_docs_list_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = re.findall(r"^    (\w+)\s", capsys.readouterr().out, re.MULTILINE)
    table = DOCS.read_text().split("\n## ", 1)[0]  # the list at the top of the page
    documented = re.findall(r"^\| `labgate (\w+)", table, re.MULTILINE)
    assert listed[:3] == ["serve", "validate", "demo"]
    assert documented == listed  # every command, in --help's order: a new command needs its row
    assert "`labgate --version`" in table
