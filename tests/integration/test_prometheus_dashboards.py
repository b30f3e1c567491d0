"""A real Prometheus scrapes a running labgate (``serve --workers 2``) under simulated traffic
with faults; every dashboard panel's PromQL and every recording rule then returns data. The
dashboards' JSON is checked for panel ids, datasource references and metric names that exist."""

from __future__ import annotations

import importlib.util
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from labgate.testing.prometheus import parse_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = ROOT / "deploy" / "grafana"
TRAFFIC_S = 6.0


def load(name: str) -> Any:
    """A module of ``deploy/grafana`` (not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location(f"_labgate_grafana_{name}", DASHBOARDS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generator() -> Any:
    return load("dashboards")


STACK = load("stack")
wait_for_data = STACK.wait_for_data


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((DASHBOARDS / "dashboards").glob("*.json"))}


def panel_queries() -> list[tuple[str, str, str]]:
    return [(name, panel["title"], target["expr"]) for name, d in dashboards().items()
            for panel in d["panels"] for target in panel["targets"]]


def recorded() -> list[str]:
    return [rule["record"] for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "record" in rule]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(labgate URL, Prometheus URL) after some seconds of traffic (``deploy/grafana/stack.py``)."""
    try:
        with STACK.running(tmp_path_factory.mktemp("prom"), TRAFFIC_S) as urls:
            yield urls
    except STACK.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize(("dashboard", "title", "expr"), panel_queries(), ids=lambda v: str(v)[:40])
def test_every_dashboard_panel_returns_data(stack: tuple[str, str], dashboard: str, title: str, expr: str) -> None:
    _, prom = stack
    result = wait_for_data(prom, expr)
    assert result, f"{dashboard} / {title}: no data for {expr}"


@pytest.mark.parametrize("name", recorded())
def test_every_recording_rule_returns_data(stack: tuple[str, str], name: str) -> None:
    _, prom = stack
    assert wait_for_data(prom, name), f"no data recorded for {name}"


def test_the_traffic_shows_faults_fallbacks_and_both_workers(stack: tuple[str, str]) -> None:
    _, prom = stack
    errors = {r["metric"]["provider"]: float(r["value"][1])
              for r in wait_for_data(prom, "labgate:provider_error_ratio:rate5m")}
    assert errors["good"] == 0 and errors["down"] == 1 and errors["cut"] == 0  # cut streams send 200
    assert wait_for_data(prom, 'labgate_upstream_failures_total{error="upstream_connection_error"}')
    assert wait_for_data(prom, "sum(labgate_stream_errors_total) > 0")
    assert wait_for_data(prom, "labgate_metrics_workers == 2")
    costs = {r["metric"]["model"]: float(r["value"][1])
             for r in wait_for_data(prom, "sum by (model) (labgate_cost_usd_total)")}
    assert costs["good/m1"] > 0 and costs["budgeted"] == pytest.approx(0.00012)  # the workers share the budget
    assert costs.get("good/m2", 0) == 0  # unpriced
    thresholds = {r["metric"]["threshold"] for r in wait_for_data(prom, "labgate_budget_alerts_total")}
    assert thresholds == {"0.8"}  # then the fallback (unpriced) served "budgeted"
    # the budget gauges: the workers' shared counter, reported once (not once per worker)
    budget = '{budget="model:budgeted",scope="model",period="day"}'
    [spend] = wait_for_data(prom, "labgate_budget_spend_usd" + budget)
    [limit] = wait_for_data(prom, "labgate_budget_limit_usd" + budget)
    [end] = wait_for_data(prom, "labgate_budget_window_end_seconds" + budget)
    assert float(spend["value"][1]) == pytest.approx(0.00012) and float(limit["value"][1]) == 0.000125
    assert float(end["value"][1]) % 86400 == 0 and 0 < float(end["value"][1]) - time.time() <= 86400
    [ratio] = wait_for_data(prom, "labgate:budget_spend_ratio")
    assert float(ratio["value"][1]) == pytest.approx(0.96)


def test_the_dashboard_files_are_what_the_generator_makes() -> None:
    assert {name: text for name, text in generator().render().items()} == {
        p.name: p.read_text() for p in (DASHBOARDS / "dashboards").glob("*.json")}
    assert len(dashboards()) == 5


def test_panel_ids_and_datasources() -> None:
    uids = [d["uid"] for d in dashboards().values()]
    assert len(set(uids)) == len(uids)
    for name, d in dashboards().items():
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids), name
        assert [v["name"] for v in d["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
        for panel in d["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, panel["title"])
            assert panel["targets"] and all(t["datasource"] == panel["datasource"] for t in panel["targets"])
            assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
    provisioned = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources" / "labgate.yml").read_text())
    assert [d["type"] for d in provisioned["datasources"]] == ["prometheus"]


def test_every_metric_a_dashboard_names_exists(stack: tuple[str, str]) -> None:
    labgate, _ = stack
    with urllib.request.urlopen(labgate + "/metrics", timeout=10) as resp:
        families = set(parse_metrics(resp.read().decode()))
    names = set(recorded())
    for _, title, expr in panel_queries():
        for metric in re.findall(r"\blabgate[_:][a-z0-9_:]*", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in names or metric in families or base in families, f"{title}: unknown {metric}"


def test_every_metric_a_rule_names_exists(stack: tuple[str, str]) -> None:
    labgate, _ = stack
    with urllib.request.urlopen(labgate + "/metrics", timeout=10) as resp:
        families = set(parse_metrics(resp.read().decode()))
    names = set(recorded())
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                for metric in re.findall(r"\blabgate[_:][a-z0-9_:]*", rule["expr"]):
                    base = re.sub(r"_(bucket|sum|count)$", "", metric)
                    assert metric in names or metric in families or base in families, (rule, metric)
