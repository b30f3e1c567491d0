"""Hot reload: the masked view, diffs, and the reloader's validate → build → swap → retire."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from labgate.config.reload import Change, ConfigSource, Reloader, changed_routes, config_view, diff, load_files
from labgate.runtime import Runtime
from labgate.testing.gateway import config_from


def write(directory: Path, providers: str, mappings: str = "", gateway: str = "") -> Path:
    (directory / "providers.yaml").write_text(providers)
    (directory / "model-mappings.yaml").write_text(mappings)
    (directory / "gateway.yaml").write_text("logging: {requests: false}\n" + gateway)
    return directory


PROVIDERS = """
providers:
  local:
    type: openai_compatible
    base_url: http://${SIM_HOST}:9/v1
    headers: {authorization: "Bearer literal", x-api-key: "${SIM_KEY}", x-trace: "yes"}
    models: [m1]
"""


def test_view_masks_secrets_and_shows_env_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_HOST", "127.0.0.1")
    monkeypatch.setenv("SIM_KEY", "sk-secret-value")
    loaded = load_files(write(tmp_path, PROVIDERS, gateway="auth: {master_key_env: MASTER}\n"))
    local = loaded.view["providers"]["local"]
    assert local["base_url"] == "http://${SIM_HOST}:9/v1"
    assert local["headers"] == {"authorization": "***", "x-api-key": "${SIM_KEY}", "x-trace": "yes"}
    assert loaded.view["gateway"]["auth"] == {"master_key_env": "MASTER", "virtual_keys": True, "keys_refresh_s": 0.5}
    assert "sk-secret-value" not in repr(loaded.view) and "literal" not in repr(loaded.view)
    assert loaded.version.startswith("sha256:") and set(loaded.files) == {"providers.yaml", "model-mappings.yaml",
                                                                          "gateway.yaml"}


def view(providers: dict[str, Any], mappings: dict[str, Any] | None = None,
         gateway: dict[str, Any] | None = None) -> dict[str, Any]:
    return config_view(config_from(providers, mappings, gateway))


OLD = view({"a": {"type": "vllm", "base_url": "http://h:1", "models": ["m1", "m2"]},
            "b": {"type": "ollama", "models": ["x"]}},
           {"routing": {"aliases": {"default": "m1"}}, "fallbacks": {"m1": ["x"]}})
NEW = view({"a": {"type": "vllm", "base_url": "http://h:2", "models": ["m1", "m3"]},
            "c": {"type": "ollama", "models": ["y"]}},
           {"routing": {"aliases": {"default": "m3"}, "exact_matches": {"fast": {"provider": "a", "model": "m1"}}}},
           {"server": {"port": 4001}, "resilience": {"max_attempts": 2}})


def test_diff_lists_providers_models_routes_and_settings() -> None:
    assert [str(c) for c in diff(OLD, NEW)] == [
        "~ provider a: base_url http://h:1 → http://h:2",
        "+ provider c",
        "- provider b",
        "+ model a/m3",
        "- model a/m2",
        "+ route fast",
        "~ route default: m1 → m3",
        "- fallback m1",
        "~ setting server.port: 4000 → 4001 (takes effect at restart)",
        "~ setting resilience.max_attempts: 4 → 2",
    ]
    assert diff(OLD, OLD) == []
    assert Change("+", "provider", "c").as_dict() == {"op": "+", "section": "provider", "name": "c", "detail": ""}


def test_changed_routes_are_the_names_to_test() -> None:
    assert changed_routes(OLD, NEW) == ["m1", "m3", "y", "fast", "default"]
    assert changed_routes(NEW, NEW) == []


class FakeGateway:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


@pytest.mark.asyncio
async def test_reload_applies_refuses_and_skips_unchanged(tmp_path: Path) -> None:
    provider = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m1]\n"
    loaded = load_files(write(tmp_path, provider))
    gateway = FakeGateway(Runtime.build(loaded.config))
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    first = gateway.runtime

    result = await reloader.reload(trigger="test")
    assert (result.status, result.version, gateway.runtime) == ("unchanged", loaded.version, first)

    write(tmp_path, provider, "routing:\n  aliases: {chat: m1}\n")
    result = await reloader.reload(trigger="test")
    assert result.status == "applied" and [str(c) for c in result.changes] == ["+ route chat"]
    assert gateway.runtime is not first and gateway.runtime.table.resolve("chat").name == "chat"
    assert (reloader.reloads, reloader.trigger, reloader.active.version) == (1, "test", result.version)

    second = gateway.runtime
    write(tmp_path, provider, "routing:\n  aliases: {chat: m2}\n")
    result = await reloader.reload(trigger="test")
    assert result.status == "refused" and gateway.runtime is second
    assert [(p.path, p.message) for p in result.problems] == [
        ("routing.aliases.chat", "'m2' is not a known model or provider/model pair")]
    assert reloader.describe()["last_reload"]["status"] == "refused"
    await reloader.aclose()
    await gateway.runtime.aclose()


@pytest.mark.asyncio
async def test_old_runtime_closes_only_after_its_requests_finish(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    provider = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m1]\n"
    loaded = load_files(write(tmp_path, provider))
    gateway = FakeGateway(Runtime.build(loaded.config))
    closed: list[Runtime] = []

    async def aclose(self: Runtime) -> None:
        closed.append(self)

    monkeypatch.setattr(Runtime, "aclose", aclose)
    release = asyncio.Event()
    in_flight = asyncio.create_task(release.wait())  # stands for a stream still being relayed
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    reloader.in_flight = lambda: {in_flight}
    old = gateway.runtime
    write(tmp_path, provider.replace("[m1]", "[m1, m2]"))
    assert (await reloader.reload(trigger="test")).status == "applied"
    await asyncio.sleep(0.05)
    assert closed == [] and reloader.draining == 1
    release.set()
    await asyncio.sleep(0.05)
    assert closed == [old] and reloader.draining == 0


@pytest.mark.asyncio
async def test_a_config_built_in_memory_cannot_be_reloaded() -> None:
    config = config_from({"p": {"type": "vllm", "base_url": "http://127.0.0.1:9", "models": ["m1"]}})
    from labgate.config.reload import loaded_from

    reloader = Reloader(FakeGateway(Runtime.build(config)), loaded_from(config))  # type: ignore[arg-type]
    assert not reloader.reloadable
    result = await reloader.reload(trigger="test")
    assert result.status == "refused"
    assert "not loaded from files" in result.problems[0].message


@pytest.mark.asyncio
async def test_reloads_keep_a_backup_of_each_config(tmp_path: Path) -> None:
    provider = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m1]\n"
    loaded = load_files(write(tmp_path, provider))
    gateway = FakeGateway(Runtime.build(loaded.config))
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    await reloader.start()
    write(tmp_path, provider.replace("[m1]", "[m1, m2]"))
    applied = await reloader.reload(trigger="test")
    from labgate.config.backup import list_backups

    assert [(b.version, b.reason) for b in list_backups(tmp_path / "backups")] == [
        (applied.version, "loaded (test)"), (loaded.version, "loaded (start)")]
    await reloader.aclose()


@pytest.mark.asyncio
async def test_a_hung_request_holds_the_old_runtime_only_until_the_drain_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    provider = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m1]\n"
    loaded = load_files(write(tmp_path, provider, gateway="config: {drain_timeout_s: 0.2}\n"))
    gateway = FakeGateway(Runtime.build(loaded.config))
    closed: list[Runtime] = []

    async def aclose(self: Runtime) -> None:
        closed.append(self)

    monkeypatch.setattr(Runtime, "aclose", aclose)
    hung = asyncio.create_task(asyncio.Event().wait())  # a stream whose upstream never ends
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    reloader.in_flight = lambda: {hung}
    old = gateway.runtime
    write(tmp_path, provider.replace("[m1]", "[m1, m2]"), gateway="config: {drain_timeout_s: 0.2}\n")
    assert (await reloader.reload(trigger="test")).status == "applied"
    await asyncio.sleep(0.05)
    assert (closed, reloader.draining) == ([], 1)  # still within the bound: waiting
    await asyncio.sleep(0.4)
    assert (closed, reloader.draining, hung.done()) == ([old], 0, False)  # closed under the hung request
    assert [r.getMessage() for r in caplog.records if r.name == "labgate.config" and r.levelname == "WARNING"] == [
        "1 request(s) still running 0.2 s after a reload; closing the old runtime's upstream connections under them"]
    hung.cancel()


def test_the_drain_bound_is_finite_and_positive(tmp_path: Path) -> None:
    from labgate.config.problems import ConfigError, Problem
    from labgate.config.schema.reload import ReloadConfig

    assert ReloadConfig().drain_timeout_s == 600.0
    provider = "providers:\n  p: {type: vllm, base_url: 'http://127.0.0.1:9'}\n"
    for value, message in ((".inf", "expected a finite number"), ("0", "must be greater than 0"),
                           ("-1", "must be greater than 0")):
        write(tmp_path, provider, gateway=f"config: {{drain_timeout_s: {value}}}\n")
        with pytest.raises(ConfigError) as info:
            load_files(tmp_path)
        assert info.value.problems == (
            Problem(str(tmp_path / "gateway.yaml"), "config.drain_timeout_s", message, line=2),)


@pytest.mark.asyncio
async def test_a_provider_that_fails_to_build_refuses_the_reload(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from labgate.config.problems import Problem
    from labgate.providers.openai_compat.adapter import OpenAICompatibleAdapter

    provider = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m1]\n"
    loaded = load_files(write(tmp_path, provider))
    gateway = FakeGateway(Runtime.build(loaded.config))
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    serving = gateway.runtime
    built = OpenAICompatibleAdapter.__init__

    def refuse(self: OpenAICompatibleAdapter, config: Any, *, name: str) -> None:
        if name == "broken":
            raise RuntimeError("the adapter cannot start")
        built(self, config, name=name)

    monkeypatch.setattr(OpenAICompatibleAdapter, "__init__", refuse)
    write(tmp_path, provider + "  broken:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m2]\n")
    result = await reloader.reload(trigger="test")
    assert (result.status, result.trigger, result.version, result.previous) == (
        "refused", "test", loaded.version, loaded.version)
    assert result.problems == (Problem(str(tmp_path), "", "cannot build the runtime: the adapter cannot start"),)
    assert gateway.runtime is serving and reloader.active is loaded and reloader.reloads == 0
    assert reloader.describe()["last_reload"]["errors"] == [
        {"severity": "error", "file": str(tmp_path), "path": "", "line": None, "suggestion": None,
         "message": "cannot build the runtime: the adapter cannot start"}]
    await reloader.aclose()
    await gateway.runtime.aclose()


# --- every section of a diff, and the names to test, on views with sections missing ---------------------------

OLD_ALL = view({"a": {"type": "vllm", "base_url": "http://h:1", "models": ["m1", "m2"]},
                "z": {"type": "ollama", "models": ["x"]},
                "off": {"type": "ollama", "status": "inactive", "models": ["o1"]}},
               {"routing": {"patterns": [{"pattern": "gpt-*", "provider": "a"}, {"pattern": "old-*", "provider": "a"}],
                            "capabilities": {"vision": ["m1"]},
                            "load_balancing": {"lb": {"deployments": [{"provider": "a", "model": "m1"}]}},
                            "exact_matches": {"fast": {"provider": "a", "model": "m1"}}},
                "fallbacks": {"m1": ["m2"], "gpt-*": ["m1"]}},
               {"server": {"workers": 1}})
NEW_ALL = view({"a": {"type": "vllm", "base_url": "http://h:1", "timeout_s": 30,
                      "models": ["m1", {"name": "m2", "alias": "two"}]},
                "z": {"type": "ollama", "models": ["x", "x2"]},
                "off": {"type": "ollama", "status": "inactive", "models": ["o1", "o2"]}},
               {"routing": {"patterns": [{"pattern": "gpt-*", "provider": "a", "fallback_chain": ["m1"]},
                                         {"pattern": "new-*", "provider": "z"}],
                            "capabilities": {"vision": ["m1", "m2"]},
                            "load_balancing": {"lb": {"deployments": [{"provider": "a", "model": "m1", "weight": 2}]}},
                            "exact_matches": {"fast": {"provider": "a", "model": "m2"}}},
                "fallbacks": {"m1": ["x"], "gpt-*": ["x"], "x": ["m2"], "m?": ["x"], "[ab]": ["x"]}},
               {"server": {"workers": 2}, "resilience": {"max_attempts": 3}})


def test_diff_of_every_section() -> None:
    """A provider whose only change is its models shows the models, not an empty provider line."""
    assert [str(c) for c in diff(OLD_ALL, NEW_ALL)] == [
        "~ provider a: timeout_s 60.0 → 30.0",
        "~ model a/m2: alias null → two",
        "+ model z/x2",
        "+ model off/o2",
        "~ route fast: model m1 → m2",
        '~ route lb: deployments [{"provider":"a","model":"m1","weight":1.0}] → '
        '[{"provider":"a","model":"m1","weight":2.0}]',
        '~ capability vision: ["m1"] → ["m1","m2"]',
        '~ pattern gpt-*: fallback_chain [] → ["m1"]',
        "+ pattern new-*",
        "- pattern old-*",
        '~ fallback m1: ["m2"] → ["x"]',
        '~ fallback gpt-*: ["m1"] → ["x"]',
        "+ fallback x",
        "+ fallback m?",
        "+ fallback [ab]",
        "~ setting server.workers: 1 → 2 (takes effect at restart)",
        "~ setting resilience.max_attempts: 4 → 3",
    ]
    assert diff(NEW_ALL, OLD_ALL)[:3] == [Change("~", "provider", "a", "timeout_s 30.0 → 60.0"),
                                          Change("~", "model", "a/m2", "alias two → null"),
                                          Change("-", "model", "z/x2")]


def test_changed_routes_skip_inactive_providers_and_glob_fallbacks() -> None:
    """Every model of a changed provider (by its alias), only the changed models of one whose models changed."""
    assert changed_routes(OLD_ALL, NEW_ALL) == ["m1", "two", "x2", "fast", "lb", "x"]
    assert changed_routes(NEW_ALL, OLD_ALL) == ["m1", "m2", "fast", "lb"]


def test_diff_and_changed_routes_of_views_with_sections_missing() -> None:
    """Views are plain data (a replica's, `labgate reload`'s): a missing section is an empty one."""
    old = {"providers": {"p": {"type": "vllm", "status": "active"}},
           "gateway": {"logging": {"level": "short"}}}
    new = {"providers": {"p": {"type": "vllm", "status": "active"},
                         "q": {"status": "active", "models": [{"name": "q1"}]}},
           "gateway": {"logging": {"level": "x" * 70}},
           "ports": {"engine": {"port": 8080}}, "experiments": {"e1": {"traffic": 0.5}}}
    assert [str(c) for c in diff(old, new)] == [
        "+ provider q",
        "~ setting logging.level: short → " + "x" * 57 + "...",
        "+ port engine",
        "+ experiment e1",
    ]
    assert [str(c) for c in diff(new, {**new, "ports": {"engine": {"port": 8081}},
                                       "experiments": {"e1": {"traffic": 0.25}}})] == [
        "~ port engine: port 8080 → 8081", "~ experiment e1: traffic 0.5 → 0.25"]
    assert changed_routes(old, new) == ["q1"]
    assert changed_routes({}, {"providers": {"p": {"models": [{"name": "m"}]}}}) == []  # no status: not active
    everything = {"providers": {"off": {"status": "inactive", "models": [{"name": "o"}]},
                                "p": {"status": "active", "models": [{"name": "m"}]}},
                  "mappings": {"routing": {"aliases": {"a": "m"}}, "fallbacks": {"f": ["m"]}}}
    assert changed_routes({}, everything) == ["m", "a", "f"]
    assert changed_routes({"mappings": {}}, everything) == ["m", "a", "f"]
    assert changed_routes(everything, everything) == [] and changed_routes(NEW_ALL, NEW_ALL) == []
    assert diff({}, {}) == [] and changed_routes({}, {}) == []


def test_view_shows_references_in_every_file_and_masks_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model named by a ${VAR} keeps its shape (diff reads its name); secrets are masked by their key's name."""
    monkeypatch.setenv("SIM_MODEL", "m1")
    monkeypatch.setenv("SIM_HOST", "127.0.0.1")
    write(tmp_path, 'providers:\n  local:\n    type: openai_compatible\n    base_url: http://127.0.0.1:9/v1\n'
                    '    models: ["${SIM_MODEL}", m2]\n'
                    '    headers: {X-Session-Token: "", Cookie: abc, PASSWORD: "${SIM_HOST}",'
                    ' proxy_password_env: PW}\n',
          'routing:\n  aliases: {chat: "${SIM_MODEL}", plain: m2}\n', 'server: {host: "${SIM_HOST}"}\n')
    (tmp_path / "ports.yaml").write_text('ports:\n  engine: {port: 8080, host: "${SIM_HOST}"}\n')
    loaded = load_files(tmp_path)
    local = loaded.view["providers"]["local"]
    assert [m["name"] for m in local["models"]] == ["m1", "m2"]
    assert local["headers"] == {"X-Session-Token": "", "Cookie": "***", "PASSWORD": "${SIM_HOST}",
                                "proxy_password_env": "PW"}
    assert loaded.view["mappings"]["routing"]["aliases"] == {"chat": "${SIM_MODEL}", "plain": "m2"}
    assert loaded.view["gateway"]["server"]["host"] == "${SIM_HOST}"
    assert loaded.view["ports"]["engine"]["host"] == "${SIM_HOST}"
    assert loaded.view["experiments"] == {}
    changed = {**loaded.view, "providers": {"local": {**local, "timeout_s": 1.0}}}
    assert changed_routes(loaded.view, changed) == ["m1", "m2"]
    assert [str(c) for c in diff(loaded.view, changed)] == ["~ provider local: timeout_s 60.0 → 1.0"]


# --- the audit trail, the admin view, the summary line, and who is told --------------------------------------

SMALL = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m1]\n"


class AuditStore:
    """What ``audit.record_action`` writes to; ``fail``: it raises instead."""

    def __init__(self, fail: bool = False) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.fail = fail

    async def execute(self, sql: str, params: Any = ()) -> int:
        if self.fail:
            raise OSError("audit store down")
        self.rows.append(tuple(params))
        return 1


class Ring:
    def __init__(self, store: AuditStore) -> None:
        self.store = store


@pytest.mark.asyncio
async def test_reloads_other_than_the_apis_are_audited_with_their_trigger_as_actor(tmp_path: Path) -> None:
    store = AuditStore()
    loaded = load_files(write(tmp_path, SMALL))
    gateway = FakeGateway(Runtime.build(loaded.config, keyring=Ring(store)))  # type: ignore[arg-type]
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    versions = [loaded.version]
    for n, trigger in enumerate(("SIGHUP", "watch", "sync", "replay", "api")):
        write(tmp_path, SMALL.replace("[m1]", f"[m1, m{n + 2}]"))
        versions.append((await reloader.reload(trigger=trigger)).version)
    assert await reloader.reload(trigger="SIGHUP") == reloader.last  # unchanged: audited too
    import orjson

    assert [(actor, action, target, orjson.loads(before), orjson.loads(after))
            for _, actor, action, target, before, after in store.rows] == [
        ("signal", "config.reload", None, {"version": versions[0]}, {"version": versions[1], "status": "applied"}),
        ("watcher", "config.reload", None, {"version": versions[1]}, {"version": versions[2], "status": "applied"}),
        ("replica", "config.reload", None, {"version": versions[2]}, {"version": versions[3], "status": "applied"}),
        ("replay", "config.reload", None, {"version": versions[3]}, {"version": versions[4], "status": "applied"}),
        ("signal", "config.reload", None, {"version": versions[5]}, {"version": versions[5], "status": "unchanged"}),
    ]  # the API's reload (versions[5]) is recorded by the admin surface, with its caller
    await reloader.aclose()


@pytest.mark.asyncio
async def test_an_audit_that_fails_is_logged_and_the_reload_stands(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_files(write(tmp_path, SMALL))
    gateway = FakeGateway(Runtime.build(loaded.config, keyring=Ring(AuditStore(fail=True))))  # type: ignore[arg-type]
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    write(tmp_path, SMALL.replace("[m1]", "[m1, m2]"))
    assert (await reloader.reload(trigger="SIGHUP")).status == "applied"
    assert [(r.getMessage(), repr(r.exc_info[1]) if r.exc_info else None) for r in caplog.records
            if r.name == "labgate.config" and r.levelname == "ERROR"] == [
        ("audit: could not record the SIGHUP reload", "OSError('audit store down')")]
    caplog.clear()
    no_ring = Reloader(FakeGateway(Runtime.build(loaded.config)), loaded,  # type: ignore[arg-type]
                       source=ConfigSource(path=tmp_path))
    assert (await no_ring.reload(trigger="SIGHUP")).status == "applied"
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []  # no keys: no audit log
    await reloader.aclose()


@pytest.mark.asyncio
async def test_describe_and_summary_say_what_serves_and_what_the_last_reload_did(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("labgate.config.reload.time.time", lambda: 1_700_000_000.0)
    loaded = load_files(write(tmp_path, SMALL))
    gateway = FakeGateway(Runtime.build(loaded.config))
    heard: list[tuple[str, str]] = []
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path),  # type: ignore[arg-type]
                        on_applied=lambda r: heard.append(("siblings", r.status)))
    reloader.listeners.append(lambda r: heard.append(("listener", r.status)))
    assert reloader.describe() == {
        "version": loaded.version, "source": str(tmp_path), "loaded_at": 1_700_000_000.0,
        "loaded_at_iso": "2023-11-14T22:13:20+00:00", "trigger": "start", "reloads": 0, "reloadable": True,
        "watch": False, "draining_runtimes": 0, "last_reload": None, "warnings": [], "cluster": None,
        "config": loaded.view}

    unchanged = await reloader.reload(trigger="test", propagate=True)
    assert unchanged.summary() == f"config reload (test): unchanged, serving {loaded.version}"
    write(tmp_path, SMALL.replace("[m1]", "[m1, m2]"), "routing:\n  aliases: {chat: m1}\n")
    with caplog.at_level(logging.INFO, logger="labgate.config"):
        applied = await reloader.reload(trigger="test", propagate=True)
    assert applied.summary() == (f"config reloaded (test): {loaded.version} → {applied.version}, 2 change(s)\n"
                                 "  + model p/m2\n  + route chat")
    assert applied.summary() in [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert heard == [("listener", "applied"), ("siblings", "applied")]  # unchanged: nobody told
    await reloader.reload(trigger="quiet")  # no propagate: only the listeners
    assert heard[2:] == []
    write(tmp_path, SMALL.replace("[m1]", "[m1, m3]"))
    await reloader.reload(trigger="quiet")
    assert heard[2:] == [("listener", "applied")]
    gateway.replicas = type("Replicas", (), {"describe": lambda self: {"peers": 2}})()  # type: ignore[attr-defined]
    described = reloader.describe()
    assert (described["reloads"], described["trigger"], described["cluster"], described["version"]) == (
        2, "quiet", {"peers": 2}, reloader.active.version)
    assert described["last_reload"] == {
        "status": "applied", "trigger": "quiet", "version": reloader.active.version,
        "previous_version": applied.version, "duration_ms": reloader.last.duration_ms,  # type: ignore[union-attr]
        "changes": [{"op": "+", "section": "model", "name": "p/m3", "detail": ""},
                    {"op": "-", "section": "model", "name": "p/m2", "detail": ""},
                    {"op": "-", "section": "route", "name": "chat", "detail": ""}],
        "errors": [], "warnings": []}

    (tmp_path / "providers.yaml").write_text("providers: [not a mapping")
    with caplog.at_level(logging.ERROR, logger="labgate.config"):
        refused = await reloader.reload(trigger="test")
    assert refused.summary().startswith(f"config reload (test) refused; still serving {reloader.active.version}:\n  ")
    assert refused.summary() in [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refused.summary().splitlines()) == 1 + len(refused.problems)
    await reloader.aclose()


def test_the_version_of_a_config_built_in_memory_is_a_digest_of_its_content() -> None:
    """Providers, mappings and gateway settings make the version; the order they were written in does not."""
    import re

    from labgate.config.reload import digest

    a = {"type": "vllm", "base_url": "http://127.0.0.1:9", "models": ["m1"]}
    b = {"type": "ollama", "models": ["x"]}
    version = digest(config_from({"a": a, "b": b}))
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", version)
    assert digest(config_from({"b": b, "a": a})) == version
    others = {digest(config_from({"a": a})),
              digest(config_from({"a": a, "b": b}, {"routing": {"aliases": {"c": "m1"}}})),
              digest(config_from({"a": a, "b": b}, gateway={"resilience": {"max_attempts": 2}}))}
    assert version not in others and len(others) == 3


# --- the file watcher, backups that cannot be kept, other sources ------------------------------------------------


@pytest.mark.asyncio
async def test_the_watcher_reloads_once_the_files_settle_and_stops_when_watch_is_turned_off(tmp_path: Path) -> None:
    watching = "config: {watch: true, watch_interval_s: 0.02, debounce_s: 0.05}\n"
    loaded = load_files(write(tmp_path, SMALL, gateway=watching))
    gateway = FakeGateway(Runtime.build(loaded.config))
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    await reloader.start()
    assert reloader.describe()["watch"] is True
    await asyncio.sleep(0.1)
    assert (reloader.reloads, reloader.last) == (0, None)  # nothing changed: not even tried
    write(tmp_path, SMALL.replace("[m1]", "[m1, m2]"), gateway=watching)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if reloader.reloads:
            break
    assert (reloader.reloads, reloader.trigger, reloader.last and reloader.last.status) == (1, "watch", "applied")
    applied = reloader.last
    await asyncio.sleep(0.1)
    assert reloader.last is applied  # the change was seen once: no reload again for it
    (tmp_path / "providers.yaml").write_text("providers: [not a mapping")  # refused: still watching
    for _ in range(100):
        await asyncio.sleep(0.02)
        if reloader.last and reloader.last.status == "refused":
            break
    assert (reloader.last and reloader.last.status, reloader.describe()["watch"]) == ("refused", True)
    write(tmp_path, SMALL, gateway="config: {watch: false}\n")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if reloader.reloads == 2:
            break
    assert (reloader.reloads, reloader.describe()["watch"]) == (2, False)
    from labgate.config.backup import list_backups

    await asyncio.sleep(0.05)  # the reload that turned watching off finishes (the watcher does not cancel itself)
    assert list_backups(tmp_path / "backups")[0].version == reloader.active.version
    write(tmp_path, SMALL.replace("[m1]", "[m1, m3]"), gateway="config: {watch: false}\n")
    await asyncio.sleep(0.2)
    assert reloader.reloads == 2  # not watching any more
    await reloader.aclose()


@pytest.mark.asyncio
async def test_the_watcher_sees_names_sizes_and_times_of_the_files(tmp_path: Path) -> None:
    source = ConfigSource(path=write(tmp_path, SMALL))
    before = source.signature()
    assert [name for name, _, _ in before] == ["providers.yaml", "model-mappings.yaml", "gateway.yaml"]
    assert before[0][2] == len(SMALL)
    (tmp_path / "model-mappings.yaml").unlink()
    assert [name for name, _, _ in source.signature()] == ["providers.yaml", "gateway.yaml"]
    assert ConfigSource().signature() == ()


@pytest.mark.asyncio
async def test_a_backup_that_cannot_be_kept_is_warned_about_once(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    blocked = "config: {backup_dir: blocked}\n"
    (tmp_path / "blocked").write_text("a file where the backups would go")
    loaded = load_files(write(tmp_path, SMALL, gateway=blocked))
    reloader = Reloader(FakeGateway(Runtime.build(loaded.config)), loaded,  # type: ignore[arg-type]
                        source=ConfigSource(path=tmp_path))
    await reloader.start()
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # at start already
    write(tmp_path, SMALL.replace("[m1]", "[m1, m2]"), gateway=blocked)
    assert (await reloader.reload(trigger="test")).status == "applied"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "[Errno " in warnings[0]  # the cause
    assert len(warnings) == 1  # at start; not again at the reload
    assert warnings[0].startswith(f"cannot keep a backup of the config in {tmp_path / 'blocked'}: ")
    write(tmp_path, SMALL, gateway="config: {backup: false}\n")
    assert (await reloader.reload(trigger="test")).status == "applied"
    assert not (tmp_path / "backups").exists()  # backups turned off


@pytest.mark.asyncio
async def test_a_source_that_builds_the_config_in_memory_is_reloaded_from_it(caplog: pytest.LogCaptureFixture) -> None:
    """The built-in default: discovery runs again; a runtime that fails to build is refused under the name "config"."""
    configs = [config_from({"p": {"type": "vllm", "base_url": "http://127.0.0.1:9", "models": ["m1"]}}),
               config_from({"p": {"type": "vllm", "base_url": "http://127.0.0.1:9", "models": ["m1", "m2"]}})]

    async def discover() -> Any:
        return configs.pop(0)

    from labgate.config.reload import loaded_from

    first = loaded_from(configs[0])
    gateway = FakeGateway(Runtime.build(configs[0]))
    reloader = Reloader(gateway, first, source=ConfigSource(load=discover))  # type: ignore[arg-type]
    assert reloader.reloadable and reloader.describe()["source"] == "test"
    assert (await reloader.reload(trigger="test")).status == "unchanged"
    applied = await reloader.reload(trigger="test")
    assert (applied.status, [str(c) for c in applied.changes]) == ("applied", ["+ model p/m2"])
    assert applied.duration_ms > 0 and reloader.last is applied

    async def broken() -> Any:
        raise RuntimeError("discovery crashed")

    reloader.source = ConfigSource(load=broken)
    refused = await reloader.reload(trigger="test")
    assert (refused.status, [(p.file, p.message) for p in refused.problems]) == (
        "refused", [("config", "cannot build the runtime: discovery crashed")])
    assert refused.duration_ms > 0 and reloader.last is refused
    assert [(r.getMessage(), r.levelname) for r in caplog.records if r.name == "labgate.config"][-1] == (
        "config reload (test): building the new runtime failed", "ERROR")
    await reloader.aclose()


def test_config_files_that_cannot_be_read_are_a_problem_not_a_traceback(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from labgate.config import backup
    from labgate.config.problems import ConfigError, Problem

    write(tmp_path, SMALL)
    denied = str(tmp_path / "providers.yaml")

    def unreadable(path: Path) -> dict[str, bytes]:
        raise PermissionError(13, "Permission denied", denied)  # what root cannot be refused in a test

    monkeypatch.setattr(backup, "read_files", unreadable)
    with pytest.raises(ConfigError) as info:
        load_files(tmp_path)
    assert info.value.problems == (Problem(denied, "", "cannot read the file: Permission denied"),)

    def gone(path: Path) -> dict[str, bytes]:
        raise OSError("the disk went away")  # no file name, no strerror

    monkeypatch.setattr(backup, "read_files", gone)
    with pytest.raises(ConfigError) as info:
        load_files(tmp_path)
    assert info.value.problems == (Problem(str(tmp_path), "", "cannot read the file: the disk went away"),)


@pytest.mark.asyncio
async def test_a_config_with_warnings_applies_and_says_them(tmp_path: Path) -> None:
    loaded = load_files(write(tmp_path, SMALL))
    reloader = Reloader(FakeGateway(Runtime.build(loaded.config)), loaded,  # type: ignore[arg-type]
                        source=ConfigSource(path=tmp_path))
    write(tmp_path, SMALL.replace("[m1]", "[m1, m1]"))  # listed twice: a warning, not an error
    applied = await reloader.reload(trigger="test")
    (warning,) = applied.problems
    assert (applied.status, warning.severity, warning.message) == ("applied", "warning", "model 'm1' is listed twice")
    assert (applied.as_dict()["errors"], applied.as_dict()["warnings"]) == ([], [warning.as_dict()])
    assert applied.summary().splitlines()[1:] == [f"  {warning}"]  # no change: the same model, twice
    assert reloader.describe()["warnings"] == [warning.as_dict()]
    unchanged = await reloader.reload(trigger="test")
    assert (unchanged.status, unchanged.problems) == ("unchanged", (warning,))
    await reloader.aclose()


def test_the_view_is_plain_json_data_so_a_view_that_travelled_compares_equal(tmp_path: Path) -> None:
    """What ``GET /admin/config`` sends (and a replica receives) diffs as no change against the view it came from."""
    import orjson

    (tmp_path / "ports.yaml").write_text("ports:\n  engine: {port: 8080}\n")
    (tmp_path / "experiments.yaml").write_text(
        "experiments:\n  - name: e1\n    status: running\n    start_date: 2025-10-21\n"
        "    variants: [{name: a, model: m1, weight: 1}, {name: b, model: m1, weight: 1}]\n"
        "    routing_rule: {match: {tags: [code]}}\n")
    loaded = load_files(write(tmp_path, SMALL.replace("[m1]", "[m1, m2]"), "fallbacks: {m1: [m2]}\n",
                              "cache: {}\n"))  # the cache's endpoints: a tuple
    travelled = orjson.loads(orjson.dumps(loaded.view))
    assert travelled == loaded.view and diff(travelled, loaded.view) == []
    assert list(loaded.view["experiments"]) == ["e1"] and list(loaded.view["ports"]) == ["engine"]


@pytest.mark.asyncio
async def test_watching_follows_the_setting_whoever_reloads(tmp_path: Path) -> None:
    """Off: no watcher at all; turned off by a reload of another trigger: stopped; turned on again: watching again."""
    off = "config: {watch: false, watch_interval_s: 0.02, debounce_s: 0.02}\n"
    on = off.replace("false", "true")
    loaded = load_files(write(tmp_path, SMALL, gateway=off))
    reloader = Reloader(FakeGateway(Runtime.build(loaded.config)), loaded,  # type: ignore[arg-type]
                        source=ConfigSource(path=tmp_path))
    await reloader.start()
    write(tmp_path, SMALL.replace("[m1]", "[m1, m2]"), gateway=off)
    await asyncio.sleep(0.2)
    assert reloader.reloads == 0  # not watching
    write(tmp_path, SMALL, gateway=on)
    assert (await reloader.reload(trigger="test")).status == "applied"
    write(tmp_path, SMALL.replace("[m1]", "[m1, m3]"), gateway=on)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if reloader.reloads == 2:
            break
    assert (reloader.reloads, reloader.trigger) == (2, "watch")
    write(tmp_path, SMALL, gateway=off)
    assert (await reloader.reload(trigger="test")).status == "applied"  # turned off by another trigger
    write(tmp_path, SMALL.replace("[m1]", "[m1, m4]"), gateway=off)
    await asyncio.sleep(0.2)
    assert (reloader.reloads, reloader.trigger) == (3, "test")
    write(tmp_path, SMALL, gateway=on)
    assert (await reloader.reload(trigger="test")).status == "applied"  # on again
    write(tmp_path, SMALL.replace("[m1]", "[m1, m5]"), gateway=on)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if reloader.reloads == 5:
            break
    assert (reloader.reloads, reloader.trigger) == (5, "watch")
    await reloader.aclose()


@pytest.mark.asyncio
async def test_every_result_says_its_trigger_versions_and_duration(tmp_path: Path) -> None:
    import time

    from labgate.config.problems import Problem
    from labgate.telemetry.logs import AccessLog

    access_log = AccessLog(enabled=False)
    loaded = load_files(write(tmp_path, SMALL))
    gateway = FakeGateway(Runtime.build(loaded.config))
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path), access_log=access_log)  # type: ignore[arg-type]
    results = [await reloader.reload(trigger="test")]  # unchanged
    assert (results[0].status, results[0].duration_ms > 0) == ("unchanged", True)
    write(tmp_path, SMALL, "routing:\n  aliases: {a: nope, b: nope}\n")
    results = []
    for files in (None, SMALL):
        if files:
            write(tmp_path, files.replace("[m1]", "[m1, m2]"))
        started = time.perf_counter()
        results.append(await reloader.reload(trigger="test"))
        elapsed_ms = (time.perf_counter() - started) * 1000
        duration = results[-1].duration_ms
        assert 0 < duration <= elapsed_ms and round(duration, 2) == duration
    refused, applied = results
    assert (refused.status, refused.trigger, refused.version, refused.previous) == (
        "refused", "test", loaded.version, loaded.version)
    assert refused.summary().splitlines() == [
        f"config reload (test) refused; still serving {loaded.version}:", *(f"  {p}" for p in refused.problems)]
    assert len(refused.problems) == 2 and applied.status == "applied"
    assert gateway.runtime.access_log is access_log  # the process's access log, kept across reloads
    with pytest.raises(Exception) as info:
        await ConfigSource().read()
    assert info.value.problems == (  # type: ignore[attr-defined]
        Problem("(none)", "", "this gateway's config was not loaded from files; there is nothing to reload"),)
    await reloader.aclose()


def test_long_values_are_cut_at_sixty_characters_and_fields_listed_with_commas() -> None:
    old = {"gateway": {"a": "x" * 60, "b": "y" * 61}, "providers": {"p": {"u": 1, "v": 1, "status": "inactive"}}}
    new = {"gateway": {"a": "z" * 60, "b": "w" * 61}, "providers": {"p": {"u": 2, "v": 2, "status": "inactive"}}}
    assert [str(c) for c in diff(old, new)] == [
        "~ provider p: u 1 → 2, v 1 → 2",
        f"~ setting a: {'x' * 60} → {'z' * 60}",
        f"~ setting b: {'y' * 57}... → {'w' * 57}...",
    ]


def test_a_list_item_given_by_reference_is_shown_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_ORIGIN", "http://ui.example")
    loaded = load_files(write(tmp_path, SMALL, gateway="cors: {allow_origins: ['${SIM_ORIGIN}', 'http://b']}\n"))
    assert loaded.view["gateway"]["cors"]["allow_origins"] == ["${SIM_ORIGIN}", "http://b"]


# --- routes named like secrets, the watcher step by step, closing, durations, backups ---------------------------


@pytest.mark.asyncio
async def test_routes_named_like_secrets_are_shown_and_their_changes_seen(tmp_path: Path) -> None:
    """Model and route names are no secrets: ``tokenizer`` or ``keyword-X`` are not masked like ``x-api-key``,
    so the diff and the routes to test see a change of their target."""
    two = SMALL.replace("[m1]", "[m1, m2]")
    mappings = "routing:\n  aliases: {tokenizer: m1}\nfallbacks:\n  keyword-X: [m1]\n"
    loaded = load_files(write(tmp_path, two, mappings))
    assert (loaded.view["mappings"]["routing"]["aliases"], loaded.view["mappings"]["fallbacks"]) == (
        {"tokenizer": "m1"}, {"keyword-X": ["m1"]})
    reloader = Reloader(FakeGateway(Runtime.build(loaded.config)), loaded,  # type: ignore[arg-type]
                        source=ConfigSource(path=tmp_path))
    write(tmp_path, two, mappings.replace("m1", "m2"))
    applied = await reloader.reload(trigger="test")
    assert [str(c) for c in applied.changes] == ["~ route tokenizer: m1 → m2", '~ fallback keyword-X: ["m1"] → ["m2"]']
    assert changed_routes(loaded.view, reloader.active.view) == ["tokenizer", "keyword-X"]
    await reloader.aclose()


@pytest.mark.asyncio
async def test_queue_priorities_of_routes_named_like_secrets_are_shown_and_their_changes_seen(tmp_path: Path) -> None:
    """``gateway.queue.routes``/``projects``/``teams`` are keyed by route, project and team names, and their
    values are priorities: a route named ``tokenizer`` shows its priority, and a change of it is a change."""
    queue = "queue:\n  routes: {tokenizer: high}\n  projects: {keyring: low}\n  teams: {secret-santa: critical}\n"
    loaded = load_files(write(tmp_path, SMALL, gateway=queue))
    shown = loaded.view["gateway"]["queue"]
    assert (shown["routes"], shown["projects"], shown["teams"]) == (
        {"tokenizer": "high"}, {"keyring": "low"}, {"secret-santa": "critical"})
    reloader = Reloader(FakeGateway(Runtime.build(loaded.config)), loaded,  # type: ignore[arg-type]
                        source=ConfigSource(path=tmp_path))
    write(tmp_path, SMALL, gateway=queue.replace("tokenizer: high", "tokenizer: low"))
    applied = await reloader.reload(trigger="test")
    assert [str(c) for c in applied.changes] == ["~ setting queue.routes.tokenizer: high → low"]
    await reloader.aclose()


class ScriptedSource:
    """A config source whose files' signature follows ``script`` (then stays at its last value): each read
    builds a config with one more model (a new version), watching on, as fast as the settings allow."""

    path = Path("scripted")  # a path: the watcher runs

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.polls = 0
        self.reads = 0

    def signature(self) -> Any:
        self.polls += 1
        return self.script[min(self.polls, len(self.script)) - 1]

    def config(self) -> Any:
        models = ["m1", *(f"m{n + 2}" for n in range(self.reads))]
        return config_from({"p": {"type": "vllm", "base_url": "http://127.0.0.1:9", "models": models}},
                           gateway={"config": {"watch": True, "watch_interval_s": 0.001, "debounce_s": 0.001}})

    async def read(self) -> Any:
        from labgate.config.reload import loaded_from

        self.reads += 1
        return loaded_from(self.config())


async def _polled(source: ScriptedSource, polls: int) -> None:
    """Wait until the watcher asked for the signature ``polls`` times (30 s: a hang guard only)."""
    for _ in range(3000):
        if source.polls >= polls:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the watcher polled {source.polls} times, not {polls}")


@pytest.mark.asyncio
async def test_the_watcher_reloads_a_change_once_it_has_settled() -> None:
    """Signatures seen: A at start, A, A (nothing), B (a change: wait), C (still changing), C (settled):
    one reload, of C, and none for the polls after it."""
    from labgate.config.reload import loaded_from

    source = ScriptedSource(["A", "A", "A", "B", "C", "C"])
    first = loaded_from(source.config())
    reloader = Reloader(FakeGateway(Runtime.build(first.config)), first, source=source)  # type: ignore[arg-type]
    await reloader.start()
    await _polled(source, 30)
    assert (source.reads, reloader.reloads, reloader.trigger) == (1, 1, "watch")
    assert reloader.last is not None and [str(c) for c in reloader.last.changes] == ["+ model p/m2"]
    await reloader.aclose()


@pytest.mark.asyncio
async def test_a_watched_reload_that_raises_is_logged_and_watching_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises makes ``reload`` raise; the watcher says so with the traceback and goes on."""
    from labgate.config.reload import loaded_from

    source = ScriptedSource(["A", "B", "B", *["B"] * 10, "C", "C"])
    first = loaded_from(source.config())
    reloader = Reloader(FakeGateway(Runtime.build(first.config)), first, source=source)  # type: ignore[arg-type]

    def listener(result: Any) -> None:
        if reloader.reloads == 1:
            raise RuntimeError("a listener failed")

    reloader.listeners.append(listener)
    await reloader.start()
    await _polled(source, 40)
    assert (source.reads, reloader.reloads) == (2, 2)
    failed = [r for r in caplog.records if r.name == "labgate.config" and r.levelname == "ERROR"]
    assert [(r.getMessage(), r.exc_info and str(r.exc_info[1])) for r in failed] == [
        ("config reload (watch) failed", "a listener failed")]
    await reloader.aclose()


@pytest.mark.asyncio
async def test_closing_the_reloader_waits_a_while_for_the_old_runtimes_to_close(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_files(write(tmp_path, SMALL))
    gateway = FakeGateway(Runtime.build(loaded.config))
    closed: list[Runtime] = []

    async def aclose(self: Runtime) -> None:
        closed.append(self)

    monkeypatch.setattr(Runtime, "aclose", aclose)
    release = asyncio.Event()
    in_flight = asyncio.create_task(release.wait())
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    reloader.in_flight = lambda: {in_flight}
    old = gateway.runtime
    write(tmp_path, SMALL.replace("[m1]", "[m1, m2]"))
    assert (await reloader.reload(trigger="test")).status == "applied"
    assert (closed, reloader.draining) == ([], 1)
    asyncio.get_running_loop().call_soon(release.set)  # the last request ends as the server closes
    await reloader.aclose()
    assert closed == [old]


@pytest.mark.asyncio
async def test_a_results_duration_is_its_own_time_in_ms_to_two_decimals(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The reload's clock is scripted (``time`` in the module): 12.3456 ms reads 12.35."""
    import time
    from types import SimpleNamespace

    from labgate.config import reload as module

    loaded = load_files(write(tmp_path, SMALL))
    reloader = Reloader(FakeGateway(Runtime.build(loaded.config)), loaded,  # type: ignore[arg-type]
                        source=ConfigSource(path=tmp_path))
    clock = iter([1000.0, 1000.0123456])
    monkeypatch.setattr(module, "time", SimpleNamespace(time=time.time, perf_counter=lambda: next(clock)))
    result = await reloader.reload(trigger="test")
    assert (result.status, result.duration_ms, result.as_dict()["duration_ms"]) == ("unchanged", 12.35, 12.35)


@pytest.mark.asyncio
async def test_the_backup_holds_the_bytes_that_loaded_and_names_their_source(tmp_path: Path) -> None:
    from labgate.config.backup import list_backups

    loaded = load_files(write(tmp_path, SMALL))
    write(tmp_path, SMALL.replace("[m1]", "[m1, m2]"))  # changed on disk since it loaded
    reloader = Reloader(FakeGateway(Runtime.build(loaded.config)), loaded,  # type: ignore[arg-type]
                        source=ConfigSource(path=tmp_path))
    await reloader.start()
    [kept] = list_backups(tmp_path / "backups")
    assert (kept.version, kept.reason, kept.source) == (loaded.version, "loaded (start)", str(tmp_path))
    assert (kept.path / "providers.yaml").read_text() == SMALL
    await reloader.aclose()


def test_a_file_gone_between_listing_and_reading_its_time_leaves_the_others_watched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing is faked to name a file deleted right after it was listed (a race otherwise)."""
    from labgate.config import backup

    write(tmp_path, SMALL)
    listed = backup.config_files(tmp_path)
    monkeypatch.setattr(backup, "config_files", lambda path: [path / "ports.yaml", *listed])
    assert [name for name, _, _ in ConfigSource(path=tmp_path).signature()] == [
        "providers.yaml", "model-mappings.yaml", "gateway.yaml"]
