"""Hot reload of a real ``labgate serve`` process: SIGHUP, the admin API, the file watcher, workers,
and ``labgate reload`` (diff, backup, apply, verify, roll back)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from labgate.testing import Simulator
from labgate.testing.process import labgate as running
from labgate.testing.process import stop

KEY = "sk-reload-master-key-0123456789"
CHAT = {"messages": [{"role": "user", "content": "hello"}]}


@contextmanager
def serve(config: Path, *extra: str,
          env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``labgate serve --config DIR``; yields the process and its URL; SIGTERM at the end."""
    with running("serve", "--config", str(config), "--port", "0", *extra, env=env) as gw:
        yield gw.proc, gw.url


def call(url: str, body: dict[str, Any] | None = None, *, key: str | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = orjson.dumps(body) if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), orjson.loads(exc.read())


def provider_of(url: str, model: str = "route", key: str | None = None) -> str | None:
    status, headers, body = call(url + "/v1/chat/completions", {"model": model, **CHAT}, key=key)
    return headers.get("x-labgate-provider") if status == 200 else f"{status}: {body}"


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[Simulator, Simulator]]:
    with Simulator(models=["m"]).run_in_thread() as a, Simulator(models=["m"]).run_in_thread() as b:
        yield a, b


def write(directory: Path, a: Simulator, b: Simulator, *, route: str = "a/m", watch: bool = False,
          with_b: bool = True, gateway: str = "") -> None:
    providers = {"a": {"type": "openai_compatible", "base_url": a.url + "/v1", "models": ["m"]}}
    if with_b:
        providers["b"] = {"type": "openai_compatible", "base_url": b.url + "/v1", "models": ["m"],
                          "headers": {"x-api-key": "literal-header-secret"}}
    (directory / "providers.yaml").write_bytes(orjson.dumps({"providers": providers}))
    (directory / "model-mappings.yaml").write_bytes(orjson.dumps({"routing": {"aliases": {"route": route}}}))
    (directory / "gateway.yaml").write_text(
        "logging: {requests: false}\nstore: {capture: none}\n"
        f"config: {{watch: {str(watch).lower()}, watch_interval_s: 0.1, debounce_s: 0.1}}\n{gateway}")


def test_sighup_reloads_and_refuses_an_invalid_config(tmp_path: Path, sims: tuple[Simulator, Simulator]) -> None:
    write(tmp_path, *sims, route="a/m")
    with serve(tmp_path) as (proc, url):
        assert provider_of(url) == "a"
        write(tmp_path, *sims, route="b/m")
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: provider_of(url) == "b")
        (tmp_path / "model-mappings.yaml").write_text("routing:\n  aliases: {route: mm}\n")
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: call(url + "/admin/config")[2]["last_reload"]["status"] == "refused")
        assert provider_of(url) == "b"  # the old config keeps serving
        _, _, shown = call(url + "/admin/config")
        assert shown["reloads"] == 1 and shown["trigger"] == "SIGHUP"
        assert [e["path"] for e in shown["last_reload"]["errors"]] == ["routing.aliases.route"]
        assert stop((proc,)) == [0]  # SIGTERM; a hang past 30 s fails with the child's stacks
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert "config reloaded (SIGHUP)" in err and "config reload (SIGHUP) refused" in err
    assert "'mm' is not a known model or provider/model pair (did you mean `m`?)" in err


def test_file_watcher_reloads_a_changed_file(tmp_path: Path, sims: tuple[Simulator, Simulator]) -> None:
    write(tmp_path, *sims, route="a/m", watch=True)
    with serve(tmp_path) as (_proc, url):
        assert provider_of(url) == "a"
        write(tmp_path, *sims, route="b/m", watch=True)
        eventually(lambda: provider_of(url) == "b")
        _, _, shown = call(url + "/admin/config")
        assert (shown["trigger"], shown["watch"]) == ("watch", True)


@pytest.mark.parametrize("trigger", ["SIGHUP", "api"])
def test_every_worker_reloads(tmp_path: Path, sims: tuple[Simulator, Simulator], trigger: str,
                              each_worker: Any) -> None:
    write(tmp_path, *sims, route="a/m")
    with serve(tmp_path, "--workers", "2") as (proc, url):
        before = each_worker(url, 2, parent=proc.pid)
        (old,) = {view["version"] for view in before.values()}
        assert {provider_of(url) for _ in range(10)} == {"a"}
        write(tmp_path, *sims, route="b/m")
        if trigger == "SIGHUP":
            proc.send_signal(signal.SIGHUP)  # to the parent: relayed to each worker
        else:
            status, _, body = call(url + "/admin/config/reload", method="POST")  # one worker; it tells the rest
            assert (status, body["status"]) == (200, "applied")
        eventually(lambda: {provider_of(url) for _ in range(20)} == {"b"})
        # each of the same two workers now serves the new version (pids from GET /admin/config)
        after = each_worker(url, 2, parent=proc.pid, until=lambda view: view["version"] != old)
        assert set(after) == set(before)
        # (after an API reload, the worker that applied it is told too, and finds nothing new)
        assert sorted((v["reloads"], v["trigger"], v["last_reload"]["status"]) for v in after.values()) == (
            [(1, "SIGHUP", "applied")] * 2 if trigger == "SIGHUP"
            else [(1, "SIGHUP", "applied"), (1, "api", "unchanged")])
        assert stop((proc,)) == [0]  # SIGTERM; a hang past 30 s fails with the child's stacks


def test_admin_config_needs_the_master_key_and_masks_secrets(tmp_path: Path,
                                                             sims: tuple[Simulator, Simulator]) -> None:
    write(tmp_path, *sims, gateway="auth: {master_key_env: RELOAD_TEST_KEY}\n")
    with serve(tmp_path, env={"RELOAD_TEST_KEY": KEY}) as (_proc, url):
        status, _, body = call(url + "/admin/config")
        assert (status, body["error"]["type"]) == (401, "authentication_error")
        status, _, body = call(url + "/admin/config/reload", method="POST")
        assert status == 401
        status, _, shown = call(url + "/admin/config", key=KEY)
        assert status == 200
        assert shown["config"]["providers"]["b"]["headers"] == {"x-api-key": "***"}
        assert shown["config"]["gateway"]["auth"] == {"master_key_env": "RELOAD_TEST_KEY", "virtual_keys": True,
                                                      "keys_refresh_s": 0.5}
        assert KEY not in orjson.dumps(shown).decode() and "literal-header-secret" not in orjson.dumps(shown).decode()
        assert shown["version"].startswith("sha256:") and shown["trigger"] == "start"


def test_admin_validate_over_http_checks_the_files_and_applies_nothing(
        tmp_path: Path, sims: tuple[Simulator, Simulator]) -> None:
    write(tmp_path, *sims, route="a/m", gateway="auth: {master_key_env: RELOAD_TEST_KEY}\n")
    with serve(tmp_path, env={"RELOAD_TEST_KEY": KEY}) as (_proc, url):
        validate = url + "/admin/config/validate"
        status, _, body = call(validate, method="POST")
        assert (status, body["error"]["type"]) == (401, "authentication_error")
        _, _, shown = call(url + "/admin/config", key=KEY)
        status, _, body = call(validate, method="POST", key=KEY)
        assert (status, body["valid"], body["version"], body["changes"]) == (200, True, shown["version"], [])
        write(tmp_path, *sims, route="b/m", gateway="auth: {master_key_env: RELOAD_TEST_KEY}\n")
        status, _, body = call(validate, method="POST", key=KEY)
        assert (status, body["valid"], body["active_version"], body["changed_routes"]) == (
            200, True, shown["version"], ["route"])
        assert body["version"] != shown["version"]
        (tmp_path / "model-mappings.yaml").write_text("routing:\n  aliases: {route: mm}\n")
        status, headers, body = call(validate, method="POST", key=KEY)
        assert (status, headers["x-should-retry"], [(e["severity"], e["path"]) for e in body["errors"]]) == (
            422, "false", [("error", "routing.aliases.route"), ("warning", "routing")])
        # nothing was applied: the same version serves, and the route still goes to a
        assert call(url + "/admin/config", key=KEY)[2]["version"] == shown["version"]
        assert provider_of(url, key=KEY) == "a"


def labgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labgate", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def test_labgate_reload_diffs_backs_up_applies_and_verifies(tmp_path: Path,
                                                            sims: tuple[Simulator, Simulator]) -> None:
    live = tmp_path / "live"
    live.mkdir()
    write(live, *sims, route="a/m", with_b=False)
    with serve(live) as (_proc, url):
        write(live, *sims, route="b/m")
        result = labgate("reload", "--config", str(live), "--url", url, "--validate-only")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "+ provider b" in result.stdout and "~ route route: a/m → b/m" in result.stdout
        assert provider_of(url) == "a"  # validate-only changes nothing
        result = labgate("reload", "--config", str(live), "--url", url)  # no terminal, no --force: refuses
        assert result.returncode == 1 and "--force" in result.stderr
        result = labgate("reload", "--config", str(live), "--url", url, "--force")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ok: a test request to 'route' succeeds" in result.stdout
        assert provider_of(url) == "b"
        listed = labgate("backup", "list", "--config", str(live), "--json")
        reasons = [b["reason"] for b in orjson.loads(listed.stdout)]
        assert "labgate reload: new config" in reasons and "loaded (start)" in reasons


def test_labgate_reload_rolls_back_when_a_changed_route_fails(tmp_path: Path,
                                                              sims: tuple[Simulator, Simulator]) -> None:
    staged = tmp_path / "staged"
    live = tmp_path / "live"
    staged.mkdir()
    live.mkdir()
    write(live, *sims, route="a/m")
    with serve(live) as (_proc, url):
        _, _, before = call(url + "/admin/config")
        write(staged, *sims, route="a/m")
        providers = orjson.loads((staged / "providers.yaml").read_bytes())
        providers["providers"]["dead"] = {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                          "models": ["m"]}
        (staged / "providers.yaml").write_bytes(orjson.dumps(providers))
        (staged / "model-mappings.yaml").write_bytes(orjson.dumps({"routing": {"aliases": {"route": "dead/m"}}}))
        result = labgate("reload", "--config", str(live), "--from", str(staged), "--url", url, "--force",
                         "--timeout", "2")
        assert result.returncode == 1, result.stdout
        assert "verification failed: a test request to 'route' succeeds" in result.stdout
        assert "rolled back: the gateway runs " + before["version"] + " again" in result.stdout
        assert provider_of(url) == "a"
        assert call(url + "/admin/config")[2]["version"] == before["version"]
        assert orjson.loads((live / "model-mappings.yaml").read_bytes()) == {"routing": {"aliases": {"route": "a/m"}}}


def test_labgate_reload_refuses_an_invalid_config_before_touching_anything(
        tmp_path: Path, sims: tuple[Simulator, Simulator]) -> None:
    write(tmp_path, *sims)
    with serve(tmp_path) as (_proc, url):
        (tmp_path / "model-mappings.yaml").write_text("routing:\n  aliases: {route: b/mm}\n  exact_match: {}\n")
        result = labgate("reload", "--config", str(tmp_path), "--url", url, "--force")
        assert result.returncode == 1
        assert "`routing.exact_match`: unknown key (did you mean `exact_matches`?)" in result.stdout
        assert "INVALID — nothing applied" in result.stdout
        assert call(url + "/admin/config")[2]["reloads"] == 0
