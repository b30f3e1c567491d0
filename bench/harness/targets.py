"""What is measured: the upstream directly, labgate, and the optional peers (LiteLLM, Portkey).

Each gateway is installed (peers: into a cache dir, never required), given a
config pointing at the same fast upstream, started pinned to the gateway
core, and timed from spawn to its first 200 answer (cold start).
"""

from __future__ import annotations

import compileall
import hashlib
import http.client
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import procs
from harness.load import Target, body

LABGATE_KEY = "sk-labgate-bench"  # a throwaway key for the benchmark only
LITELLM_KEY = "sk-litellm-bench"
UPSTREAM_KEY = "sk-upstream-bench"
MODELS = ("bench", "bench-paced")


@dataclass(slots=True)
class Running:
    """A started gateway (or the upstream itself for ``direct``)."""

    name: str
    target: Target
    pid: int  # the process whose CPU and RSS are measured: the one holding the listening socket
    proc: subprocess.Popen[bytes] | None  # what to stop afterwards (None: the shared upstream)
    cold_start_ms: float | None


def first_ok(target: Target, *, started: float, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Milliseconds from ``started`` (spawn) to the first 200 answer to a chat completion."""
    url = target.url.removeprefix("http://")
    hostport, _, path = url.partition("/")
    host, _, port = hostport.partition(":")
    payload = body(target.model).encode()
    headers = {"content-type": "application/json", **dict(h.split(": ", 1) for h in target.headers)}
    deadline = started + timeout
    last = "no answer"
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before answering")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("POST", "/" + path, payload, headers)
            answer = conn.getresponse()
            data = answer.read()
            if answer.status == 200:
                return (time.perf_counter() - started) * 1000
            last = f"HTTP {answer.status}: {data[:200]!r}"
            time.sleep(0.05)
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.003)
        finally:
            conn.close()
    raise RuntimeError(f"no 200 answer within {timeout:.0f} s (last: {last})")


def start(name: str, argv: list[str], *, port: int, target: Target, cores: frozenset[int], log: Path,
          env: dict[str, str] | None = None, stdout: Path | None = None, timeout: float = 60.0,
          helper_cores: frozenset[int] | None = None) -> Running:
    """Spawn, wait for the first 200, find the listening process; move its helper processes to ``helper_cores``."""
    out = stdout.open("ab") if stdout is not None else None
    started = time.perf_counter()
    proc = procs.spawn(argv, cores=cores, log=log, env=env, stdout=out)
    if out is not None:
        out.close()
    try:
        cold = first_ok(target, started=started, proc=proc, timeout=timeout)
        pid = procs.listener(port, proc.pid) or proc.pid
        if helper_cores is not None:
            procs.pin_helpers(pid, helper_cores)
    except BaseException as exc:
        procs.stop(proc)
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise RuntimeError(f"{name} did not start: {exc}\n--- {log} (tail) ---\n{tail}") from None
    return Running(name, target, pid, proc, cold)


# ---------------------------------------------------------------- labgate


def labgate_command() -> list[str]:
    script = Path(sys.executable).with_name("labgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "labgate"]


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode(errors="replace").strip()


def snapshot_labgate(repo: Path, workdir: Path, *, rev: str | None) -> tuple[Path, str]:
    """A frozen, byte-compiled copy of labgate's ``src/`` to run, and what it is.

    Every round starts labgate afresh, so running the live tree would measure
    whatever someone saved in between; the copy is taken once, at the start.
    ``rev`` takes ``src/`` from that git revision instead of the working tree.
    """
    dest = workdir / f"labgate-src-{rev or 'tree'}".replace("/", "_")
    dest.mkdir(parents=True, exist_ok=True)
    if rev:
        commit = _git(repo, "rev-parse", "--short", f"{rev}^{{commit}}")
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit, "src"],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
        what = f"git {commit} (src/ as committed)"
    else:
        shutil.copytree(repo / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        head = _git(repo, "rev-parse", "--short", "HEAD")
        changed = _git(repo, "status", "--porcelain", "--", "src").splitlines()
        digest = hashlib.sha256()
        for file in sorted((dest / "src").rglob("*.py")):
            digest.update(str(file.relative_to(dest)).encode() + b"\0" + file.read_bytes())
        what = (f"working tree at git {head}" + (f" + {len(changed)} changed/new paths in src/" if changed else "")
                + f", snapshot sha256 {digest.hexdigest()[:12]}")
    compileall.compile_dir(dest / "src", quiet=1)  # like an installed package: cold start without compiling
    return dest / "src", what


def write_labgate_config(directory: Path, *, upstream: str, port: int, extra: str = "",
                        provider_extra: str = "") -> None:
    """One openai_compatible provider at the upstream; auth on; one JSON access-log line per request.

    ``extra`` is YAML appended to gateway.yaml (more top-level sections, e.g. ``store: {capture: none}``);
    an ``experiments:`` section in it goes to experiments.yaml instead.
    ``provider_extra`` are ``key: value`` lines added to the provider (e.g. ``max_parallel_requests: 64``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    sections = yaml.safe_load(extra) if extra.strip() else None
    if isinstance(sections, dict) and "experiments" in sections:
        (directory / "experiments.yaml").write_text(yaml.safe_dump({"experiments": sections.pop("experiments")}))
        extra = yaml.safe_dump(sections) if sections else ""
    (directory / "providers.yaml").write_text(
        "providers:\n"
        "  fast:\n"
        "    type: openai_compatible\n"
        f"    base_url: {upstream}/v1\n"
        "    api_key_env: LABGATE_BENCH_UPSTREAM_KEY\n"
        f"    models: [{', '.join(MODELS)}]\n"
        + "".join(f"    {line.strip()}\n" for line in provider_extra.splitlines() if line.strip()))
    (directory / "gateway.yaml").write_text(
        "server:\n"
        f"  host: 127.0.0.1\n  port: {port}\n"
        "auth:\n  master_key_env: LABGATE_BENCH_KEY\n"
        "logging:\n  level: info\n  requests: true\n" + (extra.strip() + "\n" if extra.strip() else ""))


def start_labgate(workdir: Path, *, upstream: str, cores: frozenset[int], tag: str, source: Path,
                  name: str = "labgate", extra_yaml: str = "", helper_cores: frozenset[int] | None = None) -> Running:
    """labgate from ``source`` (a ``src/`` dir put first on PYTHONPATH), pinned to ``cores``; its history
    writer process to ``helper_cores`` (as the OS would put it on an idle core; its CPU is reported apart)."""
    port = procs.free_port()
    config = workdir / f"{name.replace('@', '-').replace('/', '_')}-config"
    write_labgate_config(config, upstream=upstream, port=port, extra=extra_yaml)
    # The history store (default: SQLite with full capture) stays on, but in the work dir,
    # not in the user's data directory.
    env = {**os.environ, "LABGATE_BENCH_KEY": LABGATE_KEY, "LABGATE_BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
           "LABGATE_DATA_DIR": str(workdir / f"data-{name.replace('@', '-').replace('/', '_')}"),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(source), os.environ.get("PYTHONPATH"))))}
    target = Target(f"http://127.0.0.1:{port}/v1/chat/completions", (f"authorization: Bearer {LABGATE_KEY}",))
    safe = name.replace("@", "-").replace("/", "_")
    return start(name, [*labgate_command(), "serve", "--config", str(config), "--port", str(port)],
                 port=port, target=target, cores=cores, log=workdir / f"{safe}-{tag}.log", env=env,
                 stdout=workdir / f"{safe}-access.log", timeout=30, helper_cores=helper_cores)


# ---------------------------------------------------------------- peers


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    home: Path  # where it is installed (a throwaway venv or npm prefix)
    version: str


def _log_tail(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if "is ignored" not in ln]
    return "\n".join(lines[-12:])


def install_litellm(cache: Path, *, spec: str, log: Path) -> Peer:
    """LiteLLM proxy in its own venv under ``cache`` (reused when it is already there)."""
    home = cache / "litellm"
    exe = home / "bin" / "litellm"
    if not exe.exists():
        print(f"bench: installing LiteLLM ({spec}) into {home} — a few minutes the first time", file=sys.stderr)
        started = time.monotonic()
        with log.open("ab") as out:
            steps = [[sys.executable, "-m", "venv", "--clear", str(home)],
                     [str(home / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", spec]]
            for step in steps:
                if subprocess.run(step, stdout=out, stderr=out, timeout=1800, check=False).returncode != 0:
                    shutil.rmtree(home, ignore_errors=True)
                    raise RuntimeError(f"`{' '.join(step)}` failed:\n{_log_tail(log)}")
        print(f"bench: LiteLLM installed in {time.monotonic() - started:.0f} s", file=sys.stderr)
    version = subprocess.run([str(home / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, check=False).stdout.strip()
    return Peer("litellm", home, version or "?")


def start_litellm(peer: Peer, workdir: Path, *, upstream: str, cores: frozenset[int], tag: str) -> Running:
    port = procs.free_port()
    config = workdir / "litellm.yaml"
    entries = "".join(
        f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
        f"      api_base: {upstream}/v1\n      api_key: {UPSTREAM_KEY}\n" for m in MODELS)
    config.write_text(f"model_list:\n{entries}general_settings:\n  master_key: {LITELLM_KEY}\n")
    # No network here: without the local cost map LiteLLM retries a download at start-up.
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    target = Target(f"http://127.0.0.1:{port}/v1/chat/completions", (f"authorization: Bearer {LITELLM_KEY}",))
    argv = [str(peer.home / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    return start("litellm", argv, port=port, target=target, cores=cores, log=workdir / f"litellm-{tag}.log",
                 env=env, timeout=180)


def install_portkey(cache: Path, *, spec: str, log: Path) -> Peer:
    """Portkey's gateway from npm into ``cache`` (what ``npx @portkey-ai/gateway`` would fetch)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("npm/node are not installed (apt-get install -y nodejs npm)")
    home = cache / "portkey"
    entry = home / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not entry.exists():
        print(f"bench: installing Portkey gateway ({spec}) into {home}", file=sys.stderr)
        home.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            done = subprocess.run([npm, "install", "--prefix", str(home), "--no-audit", "--no-fund", spec],
                                  stdout=out, stderr=out, timeout=900, check=False)
        if done.returncode != 0 or not entry.exists():
            raise RuntimeError(f"npm install {spec} failed:\n{_log_tail(log)}")
    package = (entry.parent.parent / "package.json").read_text()
    version = package.split('"version"', 1)[1].split('"')[1] if '"version"' in package else "?"
    return Peer("portkey", home, version)


def start_portkey(peer: Peer, workdir: Path, *, upstream: str, cores: frozenset[int], tag: str) -> Running:
    port = procs.free_port()
    headers = ("x-portkey-provider: openai", f"x-portkey-custom-host: {upstream}/v1",
               f"authorization: Bearer {UPSTREAM_KEY}")
    target = Target(f"http://127.0.0.1:{port}/v1/chat/completions", headers)
    bin_dir = peer.home / "node_modules" / ".bin"
    argv = [str(bin_dir / "gateway"), f"--port={port}", "--headless"]
    env = {**os.environ, "NODE_ENV": "production"}
    return start("portkey", argv, port=port, target=target, cores=cores, log=workdir / f"portkey-{tag}.log",
                 env=env, timeout=60)


def sequential(port: int, n: int, *, stream: bool = False, key: str = LABGATE_KEY) -> None:
    """``n`` chat completions to labgate on ``port``, one after another on one kept-alive connection
    (the instruction-counting benchmarks' load: every answer must be a 200)."""
    payload = body("bench", stream=stream).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(n):
            conn.request("POST", "/v1/chat/completions", payload,
                         {"content-type": "application/json", "authorization": f"Bearer {key}"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"the gateway answered {answer.status}")
    finally:
        conn.close()
