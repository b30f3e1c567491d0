"""Hot reload: validate the files again, build a new Runtime, swap it in, retire the old one.

Three triggers share :meth:`Reloader.reload`: ``SIGHUP``, ``POST
/admin/config/reload`` and the file watcher (``config.watch: true``). A
reload:

1. reads and validates the config the way start-up does (schema and
   cross-file checks); a config with errors is refused with its report and
   the running one keeps serving;
2. builds a new :class:`~labgate.runtime.Runtime` (route table, adapters with
   fresh connection pools) — a failure here refuses the reload too;
3. swaps ``gateway.runtime``: each request takes that reference once, so
   new requests use the new runtime and requests in flight keep the old one;
4. retires the old runtime: it waits until every request that was in flight
   at the swap has finished (streams included, up to
   ``config.drain_timeout_s``), then closes its upstream connections.

The active config is kept with its version (a digest of the files' bytes),
load time and a secret-masked view for ``GET /admin/config``; each config
that loads from files is also kept as a backup (``config/backup.py``), which
is what ``labgate reload`` rolls back to.

Every reload is appended to the audit log (``audit.py``, action
``config.reload``) when virtual keys give it a store: the API's by the
admin surface (its caller is the actor), the others here with actor
``signal`` (SIGHUP), ``watcher`` (the file watcher) or the trigger's name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from labgate.config import backup
from labgate.config.load import Config, load_config, read_raw
from labgate.config.problems import ConfigError, Problem
from labgate.config.variables import References
from labgate.runtime import Runtime

if TYPE_CHECKING:
    from labgate.gateway import Gateway
    from labgate.telemetry.logs import AccessLog

log = logging.getLogger("labgate.config")

_SECRET = re.compile(r"key|secret|token|password|passwd|authorization|credential|cookie", re.IGNORECASE)
MASK = "***"
# Settings a running server cannot change: they take effect at the next start.
RESTART_ONLY = ("gateway.server.host", "gateway.server.port", "gateway.server.workers",
                "gateway.server.max_body_bytes", "gateway.server.keepalive_timeout_s", "gateway.store",
                "gateway.metrics.enabled", "gateway.tracing",
                # the HTTP server's limits (server/limits.py) are fixed when it starts
                "gateway.server.max_header_bytes", "gateway.server.request_read_timeout_s",
                "gateway.server.max_connections", "gateway.server.max_connections_per_ip",
                # replicas (server/replicas.py): the cluster link is made once, at start
                "gateway.state.cluster", "gateway.state.sync_interval_s", "gateway.state.share_circuits",
                "gateway.state.share_config")
# the audit log's actor for a reload's trigger
AUDIT_ACTORS = {"SIGHUP": "signal", "watch": "watcher", "sync": "replica"}


# --- what is loaded ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded:
    """One validated config, with what identifies and describes it."""

    config: Config
    version: str
    view: dict[str, Any]  # secrets masked, ${VAR} references shown as written
    files: dict[str, bytes] = field(default_factory=dict)  # the bytes it was loaded from (none: not from files)


def config_view(config: Config, raw_refs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config as plain data for ``GET /admin/config`` and diffs: secrets masked.

    Values that came from the environment show their ``${VAR}`` reference
    (from ``raw_refs``, the files read with references left in); any value
    under a key named like a key, secret, token or password is masked, but
    not in the mappings and the queue's priorities by route, project and team:
    they hold names and priorities only, and a route named ``tokenizer`` is no
    secret (its target masked, a diff would not see it change). Names of variables (``*_env``) are shown: they say
    what to set.
    """
    view: dict[str, Any] = {
        "providers": {n: p.model_dump(mode="json") for n, p in config.providers.items()},
        "mappings": config.mappings.model_dump(mode="json"),
        "gateway": config.gateway.model_dump(mode="json"),
        "ports": config.ports.model_dump(mode="json")["ports"],
        "experiments": {e["name"]: e for e in config.experiments.model_dump(mode="json")["experiments"]},
    }
    if raw_refs:
        sources = {"providers": (raw_refs.get("providers") or {}).get("providers"),
                   "mappings": raw_refs.get("mappings"), "gateway": raw_refs.get("gateway"),
                   "ports": (raw_refs.get("ports") or {}).get("ports")}
        view = {k: _overlay(v, sources.get(k)) for k, v in view.items()}
    masked = {k: v if k == "mappings" else _mask(v) for k, v in view.items()}
    queue = view["gateway"].get("queue")
    if isinstance(queue, dict):  # priorities keyed by route, project and team names: names, not secrets
        masked["gateway"]["queue"].update({k: queue[k] for k in ("routes", "projects", "teams") if k in queue})
    return masked


def _overlay(value: Any, raw: Any) -> Any:
    # a scalar only: a model named by reference (``models: ["${M}"]``) is a dict in the view, and keeps its shape
    if isinstance(raw, str) and "${" in raw and not isinstance(value, dict | list):
        return raw
    if isinstance(value, dict) and isinstance(raw, dict):
        return {k: _overlay(v, raw.get(k)) for k, v in value.items()}
    if isinstance(value, list) and isinstance(raw, list) and len(raw) == len(value):
        return [_overlay(v, r) for v, r in zip(value, raw, strict=True)]
    return value


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    if (isinstance(value, str) and value and _SECRET.search(key) and not key.endswith("_env")
            and not value.startswith("${")):
        return MASK
    return value


def digest(config: Config) -> str:
    """The version of a config that was not loaded from files (the built-in default, tests)."""
    data = {"providers": {n: p.model_dump(mode="json") for n, p in config.providers.items()},
            "mappings": config.mappings.model_dump(mode="json"), "gateway": config.gateway.model_dump(mode="json")}
    return "sha256:" + hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def load_files(path: Path) -> Loaded:
    """Read and validate the config at ``path`` (blocking: run it in a thread); raise ConfigError."""
    try:
        files = backup.read_files(path)
    except OSError as exc:  # the same problem load_config reports for an unreadable file
        raise ConfigError([Problem(str(exc.filename or path), "", f"cannot read the file: {exc.strerror or exc}")]
                          ) from None
    config = load_config(path)
    try:
        raw_refs = read_raw(path, env=References(os.environ)).parts
    except ConfigError:  # changed under us since load_config: show values without references
        raw_refs = {}
    return Loaded(config, backup.version_of(files), config_view(config, raw_refs), files)


def loaded_from(config: Config) -> Loaded:
    """A config built in memory (the built-in default, tests): no files, a digest for a version."""
    return Loaded(config, digest(config), config_view(config))


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the running config comes from, so that a reload can read it again.

    ``path``: a config directory or ``labgate.yaml``. ``load``: how to build it
    otherwise (the built-in default runs local engine discovery again).
    """

    path: Path | None = None
    load: Callable[[], Awaitable[Config]] | None = None

    async def read(self) -> Loaded:
        if self.path is not None:
            return await asyncio.to_thread(load_files, self.path)
        if self.load is not None:
            return loaded_from(await self.load())
        raise ConfigError([Problem("(none)", "", "this gateway's config was not loaded from files; "
                                   "there is nothing to reload")])

    def signature(self) -> tuple[tuple[str, int, int], ...]:
        """What the watcher compares: each config file's name, mtime and size."""
        if self.path is None:
            return ()
        out = []
        for file in backup.config_files(self.path):
            try:
                st = file.stat()
            except OSError:
                continue
            out.append((file.name, st.st_mtime_ns, st.st_size))
        return tuple(out)


# --- what changes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two configs: ``+`` added, ``-`` removed, ``~`` changed."""

    op: Literal["+", "-", "~"]
    section: str  # provider, model, route, fallback, setting, port
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.op} {self.section} {self.name}" + (f": {self.detail}" if self.detail else "")

    def as_dict(self) -> dict[str, str]:
        return {"op": self.op, "section": self.section, "name": self.name, "detail": self.detail}


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _keyed(old: Mapping[str, Any], new: Mapping[str, Any], section: str,
           detail: Callable[[Any, Any], str] | None = None) -> Iterator[Change]:
    for name in new:
        if name not in old:
            yield Change("+", section, str(name))
        elif old[name] != new[name]:
            yield Change("~", section, str(name), detail(old[name], new[name]) if detail else "")
    for name in old:
        if name not in new:
            yield Change("-", section, str(name))


def _fields(old: Mapping[str, Any], new: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in skip and old.get(k) != new.get(k)]
    return ", ".join(f"{k} {_short(old.get(k))} → {_short(new.get(k))}" for k in keys)


def _flat(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _flat(v, f"{prefix}.{k}")
    else:
        yield prefix, value


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """What changes from one config view to another: providers, models, routes, settings, ports."""
    changes: list[Change] = []
    op, np = old.get("providers", {}), new.get("providers", {})
    changes += _keyed(op, np, "provider", lambda a, b: _fields(a, b, skip=("models",)))
    for name in np:
        if name in op:
            before = {m["name"]: m for m in op[name].get("models", [])}
            after = {m["name"]: m for m in np[name].get("models", [])}
            changes += [Change(c.op, "model", f"{name}/{c.name}", c.detail)
                        for c in _keyed(before, after, "model", _fields)]
    changes = [c for c in changes if not (c.section == "provider" and c.op == "~" and not c.detail)]
    om, nm = old.get("mappings", {}), new.get("mappings", {})
    orr, nr = om.get("routing", {}), nm.get("routing", {})
    for section in ("exact_matches", "load_balancing", "aliases", "capabilities"):
        label = "route" if section != "capabilities" else "capability"
        changes += _keyed(orr.get(section, {}), nr.get(section, {}), label,
                          lambda a, b: _fields(a, b) if isinstance(a, dict) else f"{_short(a)} → {_short(b)}")
    patterns = ({p["pattern"]: p for p in orr.get("patterns", [])}, {p["pattern"]: p for p in nr.get("patterns", [])})
    changes += _keyed(*patterns, "pattern", _fields)
    changes += _keyed(om.get("fallbacks", {}), nm.get("fallbacks", {}), "fallback",
                      lambda a, b: f"{_short(a)} → {_short(b)}")
    before, after = dict(_flat(old.get("gateway", {}), "gateway")), dict(_flat(new.get("gateway", {}), "gateway"))
    for key in dict.fromkeys([*before, *after]):
        if before.get(key) != after.get(key):
            note = " (takes effect at restart)" if key.startswith(RESTART_ONLY) else ""
            changes.append(Change("~", "setting", key.removeprefix("gateway."),
                                  f"{_short(before.get(key))} → {_short(after.get(key))}{note}"))
    changes += _keyed(old.get("ports", {}), new.get("ports", {}), "port", _fields)
    changes += _keyed(old.get("experiments", {}), new.get("experiments", {}), "experiment", _fields)
    return changes


def changed_routes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Model names a client may now send whose routing is new or different (to send a test request to)."""
    names: dict[str, None] = {}
    op, np = old.get("providers", {}), new.get("providers", {})
    for pname, provider in np.items():
        if provider.get("status") != "active":
            continue
        before = op.get(pname)
        changed_provider = before is None or _fields(before, provider, skip=("models",)) != ""
        old_models = {m["name"]: m for m in (before or {}).get("models", [])}
        for model in provider.get("models", []):
            if changed_provider or old_models.get(model["name"]) != model:
                names[model.get("alias") or model["name"]] = None
    orr, nr = old.get("mappings", {}).get("routing", {}), new.get("mappings", {}).get("routing", {})
    for section in ("exact_matches", "load_balancing", "aliases"):
        for name, value in nr.get(section, {}).items():
            if orr.get(section, {}).get(name) != value:
                names[name] = None
    ofb, nfb = old.get("mappings", {}).get("fallbacks", {}), new.get("mappings", {}).get("fallbacks", {})
    for name, chain in nfb.items():
        if ofb.get(name) != chain and not any(c in name for c in "*?["):
            names[name] = None
    return list(names)


# --- reloading ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadResult:
    status: Literal["applied", "unchanged", "refused"]
    trigger: str
    version: str  # the version serving after this reload
    previous: str
    problems: tuple[Problem, ...] = ()  # the refusal's errors, or the new config's warnings
    changes: tuple[Change, ...] = ()
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "refused"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "trigger": self.trigger, "version": self.version,
                "previous_version": self.previous, "duration_ms": self.duration_ms,
                "changes": [c.as_dict() for c in self.changes],
                "errors": [p.as_dict() for p in self.problems if p.severity == "error"],
                "warnings": [p.as_dict() for p in self.problems if p.severity == "warning"]}

    def summary(self) -> str:
        if self.status == "refused":
            errors = [str(p) for p in self.problems if p.severity == "error"]
            return (f"config reload ({self.trigger}) refused; still serving {self.version}:\n  "
                    + "\n  ".join(errors))
        if self.status == "unchanged":
            return f"config reload ({self.trigger}): unchanged, serving {self.version}"
        lines = [f"config reloaded ({self.trigger}): {self.previous} → {self.version}, "
                 f"{len(self.changes)} change(s)"]
        lines += [f"  {c}" for c in self.changes]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class Reloader:
    """Reloads a running gateway's config; holds what is active for ``GET /admin/config``."""

    def __init__(self, gateway: Gateway, loaded: Loaded, *, source: ConfigSource | None = None,
                 access_log: AccessLog | None = None, on_applied: Callable[[ReloadResult], None] | None = None
                 ) -> None:
        self.gateway = gateway
        self.source = source or ConfigSource()
        self.active = loaded
        self.loaded_at = time.time()
        self.trigger = "start"
        self.reloads = 0
        self.last: ReloadResult | None = None
        self.in_flight: Callable[[], set[asyncio.Task[Any]]] = set  # the server's busy request tasks
        self._access_log = access_log
        self._on_applied = on_applied
        # called after every applied reload, this replica's or a propagated one (e.g. analysis/adaptive.py)
        self.listeners: list[Callable[[ReloadResult], None]] = []
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._backup_failed = False

    @property
    def reloadable(self) -> bool:
        return self.source.path is not None or self.source.load is not None

    async def start(self) -> None:
        """Begin watching (if ``config.watch``) and keep a backup of the config that loaded."""
        self._sync_watcher()
        await self._keep_backup(self.active)

    async def reload(self, *, trigger: str, propagate: bool = False) -> ReloadResult:
        """Validate, build, swap; or refuse and keep serving. ``propagate``: tell sibling workers."""
        result = await self._reload(trigger, propagate)
        if trigger != "api":  # the API's reloads are recorded by server/admin_config.py, with their caller
            await self._audit(result)
        return result

    async def _audit(self, result: ReloadResult) -> None:
        ring = self.gateway.runtime.auth.keyring
        if ring is None:  # the audit log lives beside the keys: none without them
            return
        from labgate import audit

        try:
            await audit.record_action(ring.store, AUDIT_ACTORS.get(result.trigger, result.trigger), "config.reload",
                                      None, {"version": result.previous},
                                      {"version": result.version, "status": result.status})
        except Exception:
            log.exception("audit: could not record the %s reload", result.trigger)

    async def _reload(self, trigger: str, propagate: bool) -> ReloadResult:
        async with self._lock:
            started = time.perf_counter()
            previous = self.active
            try:
                loaded = await self.source.read()
                if loaded.version == previous.version:
                    result = ReloadResult("unchanged", trigger, previous.version, previous.version,
                                          loaded.config.warnings, duration_ms=_ms(started))
                    self.last = result
                    return result
                runtime = Runtime.build(loaded.config, access_log=self._access_log, previous=self.gateway.runtime)
            except ConfigError as exc:
                result = ReloadResult("refused", trigger, previous.version, previous.version, exc.problems,
                                      duration_ms=_ms(started))
                self.last = result
                log.error(result.summary())
                return result
            except Exception as exc:  # an adapter that refuses to build is a refusal too
                log.exception("config reload (%s): building the new runtime failed", trigger)
                problem = Problem(str(self.source.path or "config"), "", f"cannot build the runtime: {exc}")
                result = ReloadResult("refused", trigger, previous.version, previous.version, (problem,),
                                      duration_ms=_ms(started))
                self.last = result
                return result
            if runtime.limiter is not None:  # a budget the reload added starts from the history's spend
                await runtime.limiter.seed()
            old = self.gateway.runtime
            draining = self.in_flight()  # every request that may hold the old runtime
            self.gateway.runtime = runtime  # the swap: new requests take the new runtime from here on
            self._retire(old, draining, previous.config.gateway.config.drain_timeout_s)
            self.active, self.loaded_at, self.trigger = loaded, time.time(), trigger
            self.reloads += 1
            result = ReloadResult("applied", trigger, loaded.version, previous.version, loaded.config.warnings,
                                  tuple(diff(previous.view, loaded.view)), _ms(started))
            self.last = result
            log.info(result.summary())
            self._sync_watcher()
        await self._keep_backup(loaded)
        if result.status == "applied":
            for listener in self.listeners:
                listener(result)
        if propagate and self._on_applied is not None:
            self._on_applied(result)
        return result

    def _retire(self, runtime: Runtime, draining: set[asyncio.Task[Any]], timeout: float) -> None:
        async def retire() -> None:
            current = asyncio.current_task()
            pending = {t for t in draining if t is not current and not t.done()}
            if pending:
                _, late = await asyncio.wait(pending, timeout=timeout)
                if late:
                    log.warning("%d request(s) still running %g s after a reload; closing the old "
                                "runtime's upstream connections under them", len(late), timeout)
            await runtime.aclose()

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @property
    def draining(self) -> int:
        """Old runtimes still waiting for their requests to finish."""
        return len(self._retiring)

    async def _keep_backup(self, loaded: Loaded) -> None:
        """Keep a copy of a config that loaded from files, so that it can be rolled back to."""
        settings = loaded.config.gateway.config
        if not loaded.files or not settings.backup or self.source.path is None:
            return
        target = backup.default_dir(self.source.path, settings.backup_dir)
        try:
            await asyncio.to_thread(backup.ensure, self.source.path, target, reason=f"loaded ({self.trigger})",
                                    files=loaded.files)
        except OSError as exc:
            if not self._backup_failed:
                log.warning("cannot keep a backup of the config in %s: %s", target, exc)
            self._backup_failed = True

    def _sync_watcher(self) -> None:
        settings = self.active.config.gateway.config
        want = settings.watch and self.source.path is not None
        if want and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(settings.watch_interval_s, settings.debounce_s))
        elif not want and self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self, interval: float, debounce: float) -> None:
        """Poll the files' mtimes; reload once a change has settled for ``debounce`` seconds."""
        seen = self.source.signature()
        while True:
            await asyncio.sleep(interval)
            now = self.source.signature()
            if now == seen:
                continue
            while True:  # editors and `cp` write in steps: wait until the files stop changing
                await asyncio.sleep(debounce)
                settled = self.source.signature()
                if settled == now:
                    break
                now = settled
            seen = now
            try:
                await self.reload(trigger="watch")
            except Exception:
                log.exception("config reload (watch) failed")
            if not self.active.config.gateway.config.watch:
                self._watcher = None
                return

    async def aclose(self) -> None:
        """Stop watching; close the old runtimes still draining (the server has stopped by now)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        for task in list(self._retiring):
            if not task.done():
                await asyncio.wait({task}, timeout=1.0)

    def describe(self) -> dict[str, Any]:
        """``GET /admin/config``: what is serving, since when, and the last reload's outcome."""
        replicas = getattr(self.gateway, "replicas", None)  # server/replicas.py; None: this process is alone
        return {"version": self.active.version, "source": str(self.source.path or self.active.config.source),
                "loaded_at": self.loaded_at, "loaded_at_iso": _iso(self.loaded_at), "trigger": self.trigger,
                "reloads": self.reloads, "reloadable": self.reloadable,
                "watch": self.active.config.gateway.config.watch, "draining_runtimes": self.draining,
                "last_reload": self.last.as_dict() if self.last else None,
                "warnings": [p.as_dict() for p in self.active.config.warnings],
                "cluster": None if replicas is None else replicas.describe(),
                "config": self.active.view}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
