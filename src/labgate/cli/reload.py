"""``labgate reload``: apply a config change to a running gateway, safely.

    validate → diff against what runs → confirm → back up → apply → verify → (roll back)

The new config is validated here first, then compared with the config the
gateway reports (``GET /admin/config``). After confirmation (``--force``
skips it) the new files are backed up with a timestamp, applied
(``POST /admin/config/reload``) and verified: the gateway must report the
new version, answer ``/health`` and ``/health/readiness``, and serve one
test request for each route the change touched. Any failure restores the
backup of the config that ran before and reloads it.

Two ways to work: edit the live config directory in place and run
``labgate reload --config DIR`` (the gateway keeps a backup of every config
it loads, so the one running is there to roll back to); or stage the change
elsewhere and run ``labgate reload --config LIVE --from STAGED``, which backs
up the live files, copies the staged ones in, and applies them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from labgate.cli.style import Style, shown
from labgate.config import backup as backups
from labgate.config.problems import ConfigError

_PROBE = {"messages": [{"role": "user", "content": "labgate reload: test request"}], "max_tokens": 1}


def register(commands: Any) -> None:
    p = commands.add_parser("reload", help="validate, diff, back up and apply a config to a running gateway")
    p.add_argument("--config", metavar="DIR", default=".", help="the gateway's config directory (default .)")
    p.add_argument("--from", dest="source", metavar="DIR",
                   help="apply the config staged here: copy it into --config, then reload")
    p.add_argument("--url", help="the gateway (default: server.host/port of gateway.yaml)")
    p.add_argument("--key-env", metavar="VAR", help="variable holding the master key (default: auth.master_key_env)")
    p.add_argument("--validate-only", action="store_true", help="validate and show the diff; change nothing")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--backup-dir", metavar="DIR", help="where backups are (default: config.backup_dir)")
    p.add_argument("--no-test-requests", action="store_true",
                   help="verify with health checks only (no request per changed route)")
    p.add_argument("--all", action="store_true",
                   help="replicas on one Redis (state.url): wait until every replica runs the new config")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for each verification step (default 30)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(run=run)


class GatewayClient:
    """The few admin and API calls ``labgate reload`` makes (sync: one operator, one gateway)."""

    def __init__(self, url: str, key: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             extra: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = {"content-type": "application/json", **(extra or {})}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        data = orjson.dumps(body) if body is not None else (b"" if method == "POST" else None)
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.status, _json(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return {"raw": data[:200].decode("utf-8", "replace")}


@dataclass
class _Plan:
    live: Path
    staged: Path | None
    backup_dir: Path
    client: GatewayClient
    style: Style


def run(args: argparse.Namespace) -> int:
    from labgate.config.reload import changed_routes, diff, load_files

    style = Style.for_stream(sys.stdout, args.color)
    live = Path(args.config)
    new_path = Path(args.source) if args.source else live
    try:
        new = load_files(new_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(style.red(str(problem)) if problem.severity == "error" else style.yellow(str(problem)))
        print(style.red(f"{new_path}: INVALID — nothing applied"))
        return 1
    for warning in new.config.warnings:
        print(style.yellow(str(warning)))
    print(style.green(f"{new_path}: valid ({new.version})"))
    client = GatewayClient(args.url or _default_url(new.config), _key(args, new.config), args.timeout)
    try:
        status, running = client.call("GET", "/admin/config")
    except OSError as exc:
        if args.validate_only:
            print(f"(no gateway answers at {client.url}: {_reason(exc)}; nothing to compare with)")
            return 0
        print(style.red(f"labgate: no gateway answers at {client.url}: {_reason(exc)}"), file=sys.stderr)
        return 1
    if status != 200:
        print(style.red(f"labgate: GET {client.url}/admin/config answered {status}: {_message(running)}"),
              file=sys.stderr)
        return 1
    changes = diff(running["config"], new.view)
    print(f"running {running['version']} at {client.url}; new {new.version}")
    for change in changes:
        paint = {"+": style.green, "-": style.red, "~": style.yellow}[change.op]
        print(paint(shown(str(change))))  # values from the running gateway's /admin/config
    if running["version"] == new.version:
        print("no changes: the gateway already runs this config")
        return 0
    if not changes:
        print("(no change in meaning: only formatting or comments differ)")
    if args.validate_only:
        return 0
    if not args.force and not _confirm(f"Apply {len(changes)} change(s) to {client.url}? [y/N] "):
        print("not applied")
        return 1
    plan = _Plan(live, Path(args.source) if args.source else None,
                 Path(args.backup_dir) if args.backup_dir
                 else backups.default_dir(live, new.config.gateway.config.backup_dir), client, style)
    rollback = _rollback_target(plan, running["version"], force=args.force)
    if rollback is False:
        return 1
    saved = backups.ensure(new_path, plan.backup_dir, reason="labgate reload: new config", files=new.files)
    print(f"backed up the new config as {saved.path}")
    if plan.staged is not None:
        backups.restore(saved, live)
    routes = [] if args.no_test_requests else changed_routes(running["config"], new.view)
    failure = _apply(plan, new.version, routes, new.view)
    if failure is None and args.all:
        failure = _verify_replicas(client, new.version, style)
    if failure is None:
        print(style.green(f"applied {new.version}: {len(changes)} change(s); verified "
                          f"(health, {len(routes)} test request(s))"))
        return 0
    print(style.red(f"verification failed: {failure}"))
    _roll_back(plan, rollback, saved, edited_in_place=plan.staged is None)
    return 1


def _default_url(config: Any) -> str:
    server = config.gateway.server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.port}"


def _key(args: argparse.Namespace, config: Any) -> str | None:
    name = args.key_env or config.gateway.auth.master_key_env
    return os.environ.get(name) if name else None


def _reason(exc: OSError) -> str:
    return str(getattr(exc, "reason", exc))


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    return str(body)[:200]


def _confirm(prompt: str) -> bool:
    if not sys.stdin.isatty():
        print("labgate: not a terminal, so no confirmation can be asked: pass --force", file=sys.stderr)
        return False
    return input(prompt).strip().lower() in ("y", "yes")


def _rollback_target(plan: _Plan, running: str, *, force: bool) -> backups.Backup | Literal[False] | None:
    """The backup of the config that runs now (False: none, and the operator did not accept that)."""
    if plan.staged is not None:  # the live files are what runs: keep them
        saved = backups.ensure(plan.live, plan.backup_dir, reason="labgate reload: before applying")
        if saved.version != running:
            print(plan.style.yellow(f"note: the live files ({saved.version}) are not what the gateway runs "
                                    f"({running}); a rollback restores the live files"))
        print(f"backed up the live config as {saved.path}")
        return saved
    found = backups.find(plan.backup_dir, running)
    if found is not None:
        print(f"rollback target: backup {found.path} ({running})")
        return found
    message = f"no backup of the running config ({running}) in {plan.backup_dir}: a failure cannot be rolled back"
    if not force:
        print(plan.style.red(f"labgate: {message}; pass --force to apply anyway"), file=sys.stderr)
        return False
    print(plan.style.yellow(f"warning: {message}"))
    return None


def _apply(plan: _Plan, version: str, routes: list[str], view: dict[str, Any]) -> str | None:
    """Reload and verify; the reason it failed, or None."""
    client = plan.client
    try:
        status, body = client.call("POST", "/admin/config/reload")
    except OSError as exc:
        return f"POST /admin/config/reload: {_reason(exc)}"
    if status != 200:
        errors = body.get("errors", []) if isinstance(body, dict) else []
        detail = "; ".join(f"{e['file']}: `{e['path']}`: {e['message']}" for e in errors) or _message(body)
        return f"the gateway refused the config ({status}): {detail}"
    return _verify(client, version, routes, view, plan.style)


def _verify(client: GatewayClient, version: str, routes: list[str], view: dict[str, Any],
            style: Style) -> str | None:
    deadline = time.monotonic() + client.timeout
    checks: list[tuple[str, str, dict[str, Any] | None, Callable[[int, Any], bool], str]] = [
        ("GET", "/admin/config", None, lambda s, b: s == 200 and b.get("version") == version,
               f"the gateway reports version {version}"),
              ("GET", "/health", None, lambda s, b: s == 200, "GET /health answers 200")]
    if _routable(view):
        checks.append(("GET", "/health/readiness", None, lambda s, b: s == 200, "GET /health/readiness answers 200"))
    embedding = _embedding_models(view)
    for name in routes:
        probe_path, probe = (("/v1/embeddings", {"model": name, "input": "labgate reload"}) if name in embedding
                             else ("/v1/chat/completions", {"model": name, **_PROBE}))
        checks.append(("POST", probe_path, probe, lambda s, b: s == 200, f"a test request to {name!r} succeeds"))
    for method, path, body, ok, what in checks:
        last = ""
        while True:  # with several workers, each reloads a moment apart: retry until the deadline
            try:
                status, answer = client.call(method, path, body)
                if ok(status, answer):
                    print(style.green(f"ok: {what}"))
                    break
                last = f"{status} {_message(answer)}"
            except OSError as exc:
                last = _reason(exc)
            if time.monotonic() >= deadline:
                return f"{what}: {last}"
            time.sleep(0.2)
    return None


def _verify_replicas(client: GatewayClient, version: str, style: Style) -> str | None:
    """``--all``: every replica the gateway lists (``/admin/config`` → ``cluster``) reports ``version``."""
    deadline = time.monotonic() + client.timeout
    while True:
        status, body = client.call("GET", "/admin/config")
        cluster = body.get("cluster") if status == 200 and isinstance(body, dict) else None
        if status == 200 and cluster is None:
            return "--all: this gateway shares no state with other replicas (state.url is not set)"
        replicas = cluster["replicas"] if cluster else []
        rejected = [r["id"] for r in replicas if r.get("rejected") == version]
        behind = [f"{r['id']} ({r['version']}, {r['sync']})" for r in replicas if r["version"] != version]
        if replicas and not behind:
            print(style.green(f"ok: all {len(replicas)} replica(s) run {version}"))
            return None
        if rejected:
            return f"replica(s) {', '.join(rejected)} refused {version} and keep their previous config"
        if time.monotonic() >= deadline:
            return f"replica(s) not on {version} after {client.timeout:g}s: {', '.join(behind) or '(none listed)'}"
        time.sleep(0.2)


def _routable(view: dict[str, Any]) -> bool:
    return any(p.get("status") == "active" and p.get("models") for p in view.get("providers", {}).values())


def _embedding_models(view: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for provider in view.get("providers", {}).values():
        for model in provider.get("models", []):
            if "embeddings" in model.get("tags", []) or "embeddings" in model.get("capabilities", []):
                out.update(filter(None, (model["name"], model.get("alias"))))
    return out


def _roll_back(plan: _Plan, target: backups.Backup | None, failed: backups.Backup, *, edited_in_place: bool) -> None:
    style = plan.style
    if target is None:
        print(style.red("no rollback target: the gateway may run the failed config; fix it and reload"))
        return
    backups.restore(target, plan.live)
    print(f"rolled the files back to {target.path} ({target.version})")
    if edited_in_place:
        print(f"the config that failed is kept in {failed.path}")
    try:
        # the header makes the audit log say config.rollback (server/admin_config.py)
        status, body = plan.client.call("POST", "/admin/config/reload", extra={"x-labgate-reload": "rollback"})
    except OSError as exc:
        print(style.red(f"rollback reload failed: {_reason(exc)}"))
        return
    if status != 200:
        print(style.red(f"rollback reload failed ({status}): {_message(body)}"))
        return
    failure = _verify(plan.client, target.version, [], {}, style)
    if failure is None:
        print(style.yellow(f"rolled back: the gateway runs {target.version} again"))
    else:
        print(style.red(f"after the rollback: {failure}"))
