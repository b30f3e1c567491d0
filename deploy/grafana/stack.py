"""A labgate under simulated traffic with faults, scraped by a real Prometheus: the stack that
``tests/integration/test_prometheus_dashboards.py`` checks every panel against and that
``render.py`` draws the panels from.

``running(tmp, seconds)`` starts three provider simulators (one good, one failing half its
requests, one cutting its streams) and a fourth provider that is down, ``labgate serve
--workers 2`` in front of them (a fallback route, a priced model with a small budget, the
in-memory response cache), and a Prometheus of its own (free port, own config and data dir,
1 s scrapes and rule evaluations of ``deploy/prometheus/rules``), then sends ``seconds`` of
traffic and yields ``(labgate URL, Prometheus URL)``. Everything it started is stopped on exit.

Needs labgate importable (the project's virtualenv) and the ``prometheus`` binary (Debian's
package); without it ``running`` raises ``Unavailable``.
"""

from __future__ import annotations

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
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson
import yaml

from labgate.testing import Behaviour, CutStream, Simulator, Status

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


class Unavailable(RuntimeError):
    """Something the stack needs (the Prometheus binary) is not installed."""


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


def traffic(url: str, seconds: float) -> None:
    """Plain requests, streams, fallbacks (a flaky provider), cut streams and unknown models."""
    hi = [{"role": "user", "content": "hello"}]
    bodies = [{"model": "good/m1", "messages": hi}, {"model": "good/m2", "messages": hi, "stream": True},
              {"model": "mix", "messages": hi}, {"model": "mix", "messages": hi, "stream": True},
              {"model": "cut/m3", "messages": hi, "stream": True}, {"model": "nope", "messages": hi},
              {"model": "down/m1", "messages": hi},
              {"model": "good/m1", "messages": hi, "temperature": 0},  # the response cache: a miss, then hits
              {"model": "budgeted", "messages": hi, "max_tokens": 6}]  # priced: cost, budget alerts, fallback
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            list(pool.map(lambda b: post(url, b), bodies))


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    """``/api/v1/query`` at the current time: the result vector."""
    return _api(prom, "query", {"query": expr})


def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """``/api/v1/query_range``: the result matrix (``[{"metric": …, "values": [[t, "v"], …]}, …]``)."""
    return _api(prom, "query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})


def _api(prom: str, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=30) as resp:
        answer = orjson.loads(resp.read())
    if answer.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {params}: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def wait_for_data(prom: str, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (result := query(prom, expr)):
        if time.monotonic() > deadline:
            return []
        time.sleep(0.5)
    return result


@contextmanager
def running(tmp: Path, seconds: float = 6.0) -> Iterator[tuple[str, str]]:
    """(labgate URL, Prometheus URL) after ``seconds`` of traffic; ``tmp`` holds configs and data."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise Unavailable("prometheus not found: install the Debian package `prometheus` (apt-get install prometheus)")
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
        labgate = stack.enter_context(serve(config))
        prom = stack.enter_context(run_prometheus(prometheus, tmp, labgate))
        traffic(labgate, seconds)
        yield labgate, prom


@contextmanager
def serve(config: Path) -> Iterator[str]:
    """``labgate serve --workers 2`` on a free port: its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "labgate", "serve", "--config", str(config), "--port", "0",
                             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    seen = ""
    try:
        while (match := LISTENING.search(seen)) is None:
            line = proc.stderr.readline().decode(errors="replace")
            if not line and proc.poll() is not None:
                raise RuntimeError(f"labgate exited: {seen}")
            seen += line
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def run_prometheus(binary: str, tmp: Path, target: str) -> Iterator[str]:
    """Our own Prometheus: a free port, its own config and data dir, 1 s scrapes and rule evaluations."""
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
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Prometheus did not start: " + (tmp / "prometheus.log").read_text())
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
