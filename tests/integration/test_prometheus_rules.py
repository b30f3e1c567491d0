"""deploy/prometheus: the config and rules pass ``promtool``, and every alert has a unit test
that makes it fire on a bad series and one that keeps it quiet on a good series."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
TEST_FILES = sorted((DEPLOY / "tests").glob("*-test.yml"))

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install the Debian package `prometheus` (apt-get install prometheus)")
    return path


def run(promtool: str, *args: str) -> str:
    result = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_rules_and_config_are_valid(promtool: str) -> None:
    out = run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert out.count("SUCCESS") == len(RULE_FILES)
    assert "valid prometheus config file syntax" in run(promtool, "check", "config", "prometheus.yml")


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool: str, test_file: Path) -> None:
    assert "SUCCESS" in run(promtool, "test", "rules", str(test_file.relative_to(DEPLOY)))


def alerts() -> list[str]:
    return [rule["alert"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def alert_tests() -> list[dict[str, Any]]:
    return [check for path in TEST_FILES for test in yaml.safe_load(path.read_text())["tests"]
            for check in test.get("alert_rule_test", [])]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    names = alerts()
    assert len(names) == len(set(names)) >= 11
    checks = alert_tests()
    fires = {c["alertname"] for c in checks if c["exp_alerts"]}
    quiet = {c["alertname"] for c in checks if not c["exp_alerts"]}
    assert set(names) - fires == set(), "alerts with no test where they fire"
    assert set(names) - quiet == set(), "alerts with no test where they stay quiet"
    assert {c["alertname"] for c in checks} <= set(names), "tests of alerts that do not exist"


def test_every_recording_rule_is_a_labgate_name() -> None:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule.get("record", "labgate:").startswith("labgate:"), rule
