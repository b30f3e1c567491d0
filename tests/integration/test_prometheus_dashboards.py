"""A real Prometheus scrapes a running labgate (``serve --workers 2``) under simulated traffic
with faults; every dashboard panel's PromQL and every recording rule then returns data. The
dashboards' JSON is checked for panel ids, datasource references and metric names that exist."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from labgate.testing import Behaviour, CutStream, Simulator, Status
from labgate.testing.prometheus import parse_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = ROOT / "deploy" / "grafana"
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
TRAFFIC_S = 6.0


def generator() -> Any:
    spec = importlib.util.spec_from_file_location("_labgate_dashboards", DASHBOARDS / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((DASHBOARDS / "dashboards").glob("*.json"))}


def panel_queries() -> list[tuple[str, str, str]]:
    return [(name, panel["title"], target["expr"]) for name, d in dashboards().items()
            for panel in d["panels"] for target in panel["targets"]]


def recorded() -> list[str]:
    return [rule["record"] for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "record" in rule]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url + "/v1/chat/completions", data=orjson.dumps(body),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        exc.read()
    except (urllib.error.URLError, ConnectionError):  # a cut stream
        pass


def traffic(url: str) -> None:
    """Plain requests, streams, fallbacks (a flaky provider), cut streams and unknown models."""
    hi = [{"role": "user", "content": "hello"}]
    bodies = [{"model": "good/m1", "messages": hi}, {"model": "good/m2", "messages": hi, "stream": True},
              {"model": "mix", "messages": hi}, {"model": "mix", "messages": hi, "stream": True},
              {"model": "cut/m3", "messages": hi, "stream": True}, {"model": "nope", "messages": hi},
              {"model": "down/m1", "messages": hi},
              {"model": "good/m1", "messages": hi, "temperature": 0},  # the response cache: a miss, then hits
              {"model": "budgeted", "messages": hi, "max_tokens": 6}]  # priced: cost, budget alerts, fallback
    deadline = time.monotonic() + TRAFFIC_S
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            list(pool.map(lambda b: post(url, b), bodies))


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        answer = orjson.loads(resp.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for_data(prom: str, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (result := query(prom, expr)):
        if time.monotonic() > deadline:
            return []
        time.sleep(0.5)
    return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(labgate URL, Prometheus URL) after some seconds of traffic."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not found: install the Debian package `prometheus` (apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prom")
    with ExitStack() as stack:
        good = stack.enter_context(Simulator(Behaviour(completion_tokens=6), models=["m1", "m2"]).run_in_thread())
        flaky = stack.enter_context(Simulator(Behaviour(fault=Status(503), fail_rate=0.5), models=["m1"])
                                    .run_in_thread())
        cut = stack.enter_context(Simulator(Behaviour(fault=CutStream(after=2)), models=["m3"]).run_in_thread())
        config = tmp / "labgate"
        config.mkdir()
        (config / "providers.yaml").write_text(yaml.safe_dump({"providers": {
            "good": {"type": "openai_compatible", "base_url": good.url + "/v1",  # m1 priced: the cost panels
                     "models": [{"name": "m1", "pricing": {"input_per_1m": 0.0, "output_per_1m": 10.0}}, "m2"]},
            "flaky": {"type": "openai_compatible", "base_url": flaky.url + "/v1", "models": ["m1"]},
            "cut": {"type": "openai_compatible", "base_url": cut.url + "/v1", "models": ["m3"]},
            "down": {"type": "openai_compatible", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                     "models": ["m1"]}}}))
        (config / "model-mappings.yaml").write_text(yaml.safe_dump({"routing": {"exact_matches": {
            "mix": {"provider": "flaky", "model": "m1", "fallback_chain": ["good/m1"]},
            "budgeted": {"provider": "good", "model": "m1"}}}}))
        (config / "gateway.yaml").write_text(yaml.safe_dump({
            "logging": {"requests": False}, "resilience": {"circuit": {"failure_threshold": 100000}},
            "cache": {"backend": "memory"},
            # a budget that two requests use up (6 output tokens at $10/1M each, estimated exactly from
            # max_tokens; input is free): 48%, then 96% spent (an alert at 80%, the top threshold passed),
            # then the fallback serves
            "budgets": {"limits": [{"scope": "model", "name": "budgeted", "limit_usd": 0.000125, "period": "day"}],
                        "on_exhausted": "fallback", "fallback_model": "good/m2"}}))
        labgate = stack.enter_context(_labgate(config))
        prom = stack.enter_context(_prometheus(prometheus, tmp, labgate))
        traffic(labgate)
        yield labgate, prom


def _labgate(config: Path) -> Any:
    from contextlib import contextmanager

    @contextmanager
    def run() -> Iterator[str]:
        proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--config", str(config), "--port", "0",
                                 "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        seen = ""
        try:
            while (match := LISTENING.search(seen)) is None:
                line = proc.stderr.readline().decode(errors="replace")
                if not line and proc.poll() is not None:
                    pytest.fail(f"labgate exited: {seen}")
                seen += line
            yield match.group(1)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return run()


def _prometheus(binary: str, tmp: Path, target: str) -> Any:
    """Our own Prometheus: a free port, its own config and data dir, 1 s scrapes and rule evaluations."""
    from contextlib import contextmanager

    @contextmanager
    def run() -> Iterator[str]:
        rules = []
        for path in RULES:
            copy = tmp / path.name
            copy.write_text(path.read_text().replace("interval: 1m", "interval: 1s"))
            rules.append(str(copy))
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": rules,
            "scrape_configs": [{"job_name": "labgate",
                                "static_configs": [{"targets": [target.removeprefix("http://")]}]}]}))
        port = free_port()
        log = (tmp / "prometheus.log").open("wb")
        proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(url + "/-/ready", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, (tmp / "prometheus.log").read_text()
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
    return run()


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
