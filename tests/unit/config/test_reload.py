"""Hot reload: the masked view, diffs, and the reloader's validate → build → swap → retire."""

from __future__ import annotations

import asyncio
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

    assert [b.version for b in list_backups(tmp_path / "backups")] == [applied.version, loaded.version]
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
    assert (result.status, result.version, result.previous) == ("refused", loaded.version, loaded.version)
    assert result.problems == (Problem(str(tmp_path), "", "cannot build the runtime: the adapter cannot start"),)
    assert gateway.runtime is serving and reloader.active is loaded and reloader.reloads == 0
    assert reloader.describe()["last_reload"]["errors"] == [
        {"severity": "error", "file": str(tmp_path), "path": "", "line": None, "suggestion": None,
         "message": "cannot build the runtime: the adapter cannot start"}]
    await reloader.aclose()
    await gateway.runtime.aclose()
