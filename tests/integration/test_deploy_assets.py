"""The deployment assets (deploy/, docs/deploy.md), checked by the real tools.

- ``hadolint`` on ``deploy/docker/Dockerfile``; its install command (``uv sync --locked …``) dry-run
  against uv.lock; its ENTRYPOINT/CMD started and its HEALTHCHECK run against that gateway
  (no container: images cannot be built on these machines);
- ``docker-compose config`` (Debian's docker-compose, the Compose file schema) on
  ``deploy/compose/docker-compose.yml``, whose config directory labgate validates;
- ``helm lint`` and render (the Helm v4 SDK, ``helm-python-sdk``) with the default and the HA values,
  ``kubernetes-validate --strict`` on every rendered manifest, and the rendered ConfigMap loaded as a
  labgate config;
- ``systemd-analyze verify`` on ``deploy/systemd/*.service``, its output searched for warnings.

The checkers live in their own virtualenv (``deploy/checks-requirements.txt``; ``.ci/run`` makes
``.ci/deploy-venv`` and sets ``LABGATE_DEPLOY_TOOLS``); a missing tool skips with the reason, which
``LABGATE_REQUIRE_INTEGRATION=1`` turns into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from labgate.config.reload import load_files

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "labgate"
TOOLS = Path(os.environ.get("LABGATE_DEPLOY_TOOLS", ROOT / ".ci" / "deploy-venv"))
KUBE_VERSION = "1.30"


def tool(name: str) -> str:
    """A checker from the checkers' venv, else from PATH; skip (CI: fail) when it is not installed."""
    for candidate in (TOOLS / "bin" / name, shutil.which(name)):
        if candidate is not None and Path(candidate).exists():
            return str(candidate)
    pytest.skip(f"{name} is not installed: .ci/run installs it (python3 -m venv .ci/deploy-venv && "
                f".ci/deploy-venv/bin/pip install -r deploy/checks-requirements.txt)")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, check=False)


# --- Dockerfile ---------------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "docker" / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes_the_dockerfile() -> None:
    done = run(tool("hadolint"), "--failure-threshold", "info", str(DEPLOY / "docker" / "Dockerfile"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_the_dockerfile_is_multi_stage_slim_and_unprivileged() -> None:
    steps = dockerfile()
    bases = [args for word, args in steps if word == "FROM"]
    assert len(bases) == 2 and all("-slim" in base for base in bases)
    users = [args for word, args in steps if word == "USER"]
    assert users == ["10001:10001"]
    # the last stage installs nothing: it copies the locked virtualenv from the build stage
    last = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    assert not any(word == "RUN" and ("pip" in args or "uv" in args) for word, args in last)


def test_the_dockerfiles_install_command_resolves_from_the_lock(tmp_path: Path) -> None:
    syncs = [args for word, args in dockerfile() if word == "RUN" and args.startswith("uv sync")]
    assert len(syncs) == 2 and all("--locked" in s for s in syncs)
    uv = ROOT / ".tools" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("uv is not installed (make .venv/.installed installs it into .tools)")
    for command in syncs:
        args = command.split()[2:]
        env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"), "UV_PYTHON_DOWNLOADS": "never"}
        done = subprocess.run([str(uv), "sync", *args, "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                              env=env, timeout=300, check=False)
        assert done.returncode == 0, done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_images_command_serves_and_its_healthcheck_sees_it(tmp_path: Path) -> None:
    steps = dict(dockerfile())
    entry, cmd = json.loads(steps["ENTRYPOINT"]), json.loads(steps["CMD"])
    assert entry == ["labgate", "serve"]
    check = json.loads(steps["HEALTHCHECK"].split(" CMD ", 1)[1])
    port = str(_free_port())
    config = tmp_path / "etc-labgate"
    config.mkdir()
    (config / "gateway.yaml").write_text("logging: {requests: false}\n")
    (config / "providers.yaml").write_text("providers: {}\n")
    swap = {"/etc/labgate": str(config), "0.0.0.0": "127.0.0.1", "4000": port}
    argv = [sys.executable, "-m", "labgate", *entry[1:], *(swap.get(a, a) for a in cmd)]
    probe = [sys.executable if check[0] == "python" else check[0], *(a.replace("4000", port) for a in check[1:])]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while run(*probe).returncode != 0:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the healthcheck never passed"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/health/liveness").json() == {"status": "alive"}
    finally:
        proc.terminate()
        proc.wait(60)
    assert run(*probe).returncode != 0  # and it fails once the gateway is gone


# --- docker compose -------------------------------------------------------------------------------------

def test_docker_compose_config_validates_the_stack() -> None:
    compose = tool("docker-compose")
    file = str(DEPLOY / "compose" / "docker-compose.yml")
    env = {**os.environ, "LABGATE_MASTER_KEY": "test-key"}
    done = run(compose, "-f", file, "config", env=env)
    assert done.returncode == 0, done.stderr
    stack = yaml.safe_load(done.stdout)
    assert sorted(stack["services"]) == ["grafana", "labgate-1", "labgate-2", "postgres", "prometheus", "redis"]
    for name in ("labgate-1", "labgate-2"):
        service = stack["services"][name]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                         "redis": {"condition": "service_healthy"}}
    missing = run(compose, "-f", file, "config", "-q", env={k: v for k, v in os.environ.items()
                                                           if k != "LABGATE_MASTER_KEY"})
    assert missing.returncode != 0 and "set LABGATE_MASTER_KEY" in missing.stderr  # no gateway without a key
    loaded = load_files(DEPLOY / "compose" / "config")  # the replicas' config is a valid labgate config
    assert loaded.config.gateway.state.url == "redis://redis:6379/0"
    assert loaded.config.gateway.store.url == "postgresql://labgate@postgres:5432/labgate"
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["labgate-1:4000", "labgate-2:4000"]


# --- Helm -----------------------------------------------------------------------------------------------

_HELM = f"""
import json, sys, yaml, helm_python as helm
chart, values_file = sys.argv[1], sys.argv[2]
values = yaml.safe_load(open(values_file)) if values_file else None
lint = helm.lint(chart, values, strict=True, kube_version="v{KUBE_VERSION}.0")
try:
    rendered = helm.Chart.load(chart).render(values, name="labgate", namespace="lab", is_install=True)
    error = None
except helm.HelmError as exc:
    rendered, error = {{}}, str(exc)
print(json.dumps({{"lint": lint, "rendered": rendered, "error": error}}))
"""


def helm(values: Path | None) -> dict[str, Any]:
    python = tool("python")
    done = run(python, "-c", _HELM, str(CHART), str(values or ""))
    if done.returncode != 0 and "No module named 'helm_python'" in done.stderr:
        pytest.skip("helm-python-sdk is not installed in the checkers' venv (deploy/checks-requirements.txt)")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def manifests(rendered: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = {}
    for text in rendered.values():
        for doc in yaml.safe_load_all(text):
            if doc:
                out[doc["kind"]] = doc
    return out


@pytest.mark.parametrize("values", [None, CHART / "values-ha.yaml"], ids=["default", "ha"])
def test_helm_lint_render_and_kubernetes_validate(values: Path | None, tmp_path: Path) -> None:
    result = helm(values)
    lint = result["lint"]
    assert lint["errors"] == [] and [m for m in lint["messages"] if m["severity"] >= 2] == [], lint
    assert result["error"] is None
    files = []
    for name, text in result["rendered"].items():
        if text.strip():
            path = tmp_path / name.replace("/", "_")
            path.write_text(text)
            files.append(str(path))
    done = run(tool("kubernetes-validate"), "-k", KUBE_VERSION, "--strict", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = manifests(result["rendered"])
    expected = {"ConfigMap", "Deployment", "Service"} | ({"HorizontalPodAutoscaler", "PodDisruptionBudget"}
                                                          if values else set())
    assert set(kinds) == expected
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["securityContext"]["runAsNonRoot"] is True
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    assert secrets["LABGATE_MASTER_KEY"] == "labgate-keys"
    env = {"LABGATE_MASTER_KEY": "k", "LABGATE_REDIS_URL": "redis://redis:6379/0",
           "LABGATE_DATABASE_URL": "postgresql://labgate@postgres/labgate"}
    config = tmp_path / "config"
    config.mkdir()
    for name, text in kinds["ConfigMap"]["data"].items():
        (config / name).write_text(text)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        loaded = load_files(config)  # what every pod mounts is a valid labgate config
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if values is None:
        assert loaded.config.gateway.state.url is None and kinds["Deployment"]["spec"]["replicas"] == 1
    else:
        assert loaded.config.gateway.state.url == "redis://redis:6379/0"
        assert loaded.config.gateway.store.url == "postgresql://labgate@postgres/labgate"
        assert {"LABGATE_REDIS_URL", "LABGATE_DATABASE_URL", "OPENAI_API_KEY"} <= set(secrets)
        metrics = kinds["HorizontalPodAutoscaler"]["spec"]["metrics"]
        assert [m["type"] for m in metrics] == ["Resource", "Pods"]
        assert metrics[1]["pods"]["metric"]["name"] == "labgate_requests_in_flight"
        assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 2


def test_helm_refuses_replicas_without_shared_state(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("replicaCount: 3\n")
    result = helm(values)
    assert result["error"] is not None and "needs shared state" in result["error"]


# --- systemd --------------------------------------------------------------------------------------------

def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    labgate = Path(sys.executable).with_name("labgate")
    assert labgate.exists()
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert [u.name for u in units] == ["labgate-embeddings.service", "labgate-ui.service", "labgate.service"]
    for unit in units:  # the binary the units name must exist for verify: this venv's labgate stands in
        text = unit.read_text()
        assert "/opt/labgate/bin/labgate " in text and "NoNewPrivileges=yes" in text
        (tmp_path / unit.name).write_text(text.replace("/opt/labgate/bin/labgate", str(labgate)))
    done = run(analyze, "verify", *(str(tmp_path / u.name) for u in units))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    problems = [line for line in output.splitlines()
                if re.search(r"unknown|warn|ignoring|invalid|not found|failed", line, re.IGNORECASE)]
    assert problems == []
