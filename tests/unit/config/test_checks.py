"""Cross-file checks: every name a mapping mentions must resolve, and chains must not loop."""

from __future__ import annotations

from typing import Any

import pytest

from labgate.config.checks import check_config
from labgate.config.load import Config, build_config
from labgate.config.problems import ConfigError, Problem
from labgate.config.schema.gateway import GatewayConfig
from labgate.config.schema.mappings import MappingsConfig
from labgate.providers.registry import TYPES

P, M = "providers.yaml", "model-mappings.yaml"
PROVIDERS: dict[str, Any] = {
    "ollama": {"type": "ollama", "priority": 1, "models": [
        "llama3.1:8b",
        {"name": "qwen2.5-coder:7b", "alias": "coder", "capabilities": ["code_generation"]},
    ]},
    "vllm": {"type": "vllm", "models": [{"name": "Qwen/Qwen2.5-7B-Instruct", "alias": "qwen-7b"}]},
    "openai": {"type": "openai", "status": "inactive", "models": ["gpt-4o"]},
}


def check(mappings: dict[str, Any] | None = None, providers: dict[str, Any] | None = None) -> list[Problem]:
    providers = PROVIDERS if providers is None else providers
    config = Config({n: TYPES[b["type"]].config.model_validate(b) for n, b in providers.items()},
                    MappingsConfig.model_validate(mappings or {}), GatewayConfig(), source="test")
    return check_config(config, {"providers": P, "mappings": M})


def error(path: str, message: str, suggestion: str | None = None) -> Problem:
    return Problem(M, path, message, suggestion=suggestion)


def warning(path: str, message: str, suggestion: str | None = None, file: str = M) -> Problem:
    return Problem(file, path, message, severity="warning", suggestion=suggestion)


def test_a_consistent_config_has_no_problems() -> None:
    assert check({
        "routing": {
            "exact_matches": {"general": {"provider": "ollama", "model": "llama3.1:8b",
                                          "fallback_chain": ["qwen-7b", "vllm/Qwen/Qwen2.5-7B-Instruct", "vllm"]}},
            "patterns": [{"pattern": "llama*", "provider": "ollama", "fallback_chain": ["coder"]}],
            "capabilities": {"code_generation": ["coder", "qwen-7b"]},
            "load_balancing": {"pool": {"deployments": [{"provider": "ollama", "model": "llama3.1:8b"},
                                                        {"provider": "vllm", "model": "qwen-7b"}]}},
            "aliases": {"default": "general", "code": "capability:code_generation", "l2": "llama2"},
        },
        "fallbacks": {"qwen-7b": ["coder"], "*": ["llama3.1:8b"]},
    }) == []


# ---------------------------------------------------------------- routing entries


def test_exact_match_to_an_unknown_provider_suggests_one() -> None:
    assert check({"routing": {"exact_matches": {"general": {"provider": "olama", "model": "llama3.1:8b"}}}}) == [
        error("routing.exact_matches.general.provider", "provider 'olama' does not exist in providers.yaml",
              "ollama")]


def test_exact_match_to_a_model_the_provider_does_not_list_is_a_warning() -> None:
    assert check({"routing": {"exact_matches": {"general": {"provider": "ollama", "model": "llama3.1:8"}}}}) == [
        warning("routing.exact_matches.general.provider", "provider 'ollama' does not list model 'llama3.1:8'",
                "llama3.1:8b")]


def test_exact_match_without_model_uses_the_requested_name() -> None:
    assert check({"routing": {"exact_matches": {"coder": {"provider": "ollama"}}}}) == []


def test_target_on_an_inactive_provider_is_a_warning() -> None:
    assert check({"routing": {"exact_matches": {"gpt": {"provider": "openai", "model": "gpt-4o"}}}}) == [
        warning("routing.exact_matches.gpt.provider", "provider 'openai' is inactive; this target is skipped")]


def test_pattern_to_an_unknown_provider() -> None:
    assert check({"routing": {"patterns": [{"pattern": "llama*", "provider": "olama"}]}}) == [
        error("routing.patterns[0].provider", "provider 'olama' does not exist", "ollama")]


def test_load_balancing_deployments_must_resolve() -> None:
    assert check({"routing": {"load_balancing": {"pool": {"deployments": [
        {"provider": "ollama", "model": "llama3.1:8b"}, {"provider": "vlm", "model": "qwen-7b"}]}}}}) == [
        error("routing.load_balancing.pool.deployments[1]", "provider 'vlm' does not exist in providers.yaml",
              "vllm")]


# ---------------------------------------------------------------- fallback chains


def test_fallback_model_typo_suggests_the_closest_model() -> None:
    assert check({"fallbacks": {"llama3.1:8b": ["qwen2.5-coder:7"]}}) == [
        error("fallbacks.llama3.1:8b[0]", "'qwen2.5-coder:7' is not a known model, provider/model pair or provider",
              "qwen2.5-coder:7b")]


def test_exact_match_chain_entry_typo() -> None:
    assert check({"routing": {"exact_matches": {"general": {
        "provider": "ollama", "model": "llama3.1:8b", "fallback_chain": ["qwen-7b", "codr"]}}}}) == [
        error("routing.exact_matches.general.fallback_chain[1]",
              "'codr' is not a known model, provider/model pair or provider", "coder")]


def test_fallback_pair_to_an_unknown_provider() -> None:
    # The head is not a provider, so the entry is read as a model name; the hint is the closest name.
    assert check({"fallbacks": {"llama3.1:8b": ["olama/qwen2.5-coder:7b"]}}) == [
        error("fallbacks.llama3.1:8b[0]",
              "'olama/qwen2.5-coder:7b' is not a known model, provider/model pair or provider",
              "qwen2.5-coder:7b")]


def test_fallback_pair_to_a_model_the_provider_does_not_list_is_a_warning() -> None:
    assert check({"fallbacks": {"llama3.1:8b": ["vllm/qwen-7", "ollama/coder"]}}) == [
        warning("fallbacks.llama3.1:8b[0]", "provider 'vllm' does not list model 'qwen-7'",
                "qwen-7b")]


def test_provider_name_in_a_fallback_chain_is_accepted() -> None:
    assert check({"fallbacks": {"llama3.1:8b": ["vllm"]}}) == []


def test_provider_name_entry_on_an_inactive_provider_is_a_warning() -> None:
    assert check({"fallbacks": {"llama3.1:8b": ["openai"]}}) == [
        warning("fallbacks.llama3.1:8b[0]", "provider 'openai' is inactive; this target is skipped")]


def test_fallbacks_for_an_unrouted_name_is_a_warning_but_a_glob_is_not() -> None:
    assert check({"fallbacks": {"lama3": ["coder"], "qwen*": ["coder"]}}) == [
        warning("fallbacks.lama3", "'lama3' is not a routed model", "llama3.1:8b")]


@pytest.mark.parametrize(("mappings", "cycle"), [
    ({"fallbacks": {"llama3.1:8b": ["coder"], "coder": ["llama3.1:8b"]}}, "llama3.1:8b → coder → llama3.1:8b"),
    ({"fallbacks": {"a": ["b"], "b": ["c"], "c": ["a"]},
      "routing": {"aliases": {"a": "coder", "b": "coder", "c": "coder"}}}, "a → b → c → a"),
    ({"routing": {"exact_matches": {"general": {"provider": "ollama", "model": "llama3.1:8b",
                                                "fallback_chain": ["coder"]}}},
      "fallbacks": {"coder": ["general"]}}, "general → coder → general"),
])
def test_fallback_cycle_is_an_error_naming_the_cycle(mappings: dict[str, Any], cycle: str) -> None:
    problems = check(mappings)
    assert [p for p in problems if p.path == "fallbacks"] == [error("fallbacks", f"fallback cycle: {cycle}")]


def test_a_cycle_stops_the_config_from_loading() -> None:
    raw = {"providers": {"providers": PROVIDERS},
           "mappings": {"fallbacks": {"llama3.1:8b": ["coder"], "coder": ["llama3.1:8b"]}}}
    with pytest.raises(ConfigError) as info:
        build_config(raw, {"providers": P, "mappings": M}, source="test")
    assert str(info.value) == f"error: {M}: `fallbacks`: fallback cycle: llama3.1:8b → coder → llama3.1:8b"


def test_a_chain_through_a_provider_entry_is_not_a_cycle() -> None:
    assert check({"fallbacks": {"llama3.1:8b": ["vllm", "coder"], "coder": ["ollama"]}}) == []


# ---------------------------------------------------------------- capabilities and aliases


def test_capability_entries_must_be_models_or_pairs() -> None:
    assert check({"routing": {"capabilities": {"code_generation": [
        "coder", "qwen2.5-coder:7", "ollama", "vllm/qwen-7b"]}}}) == [
        error("routing.capabilities.code_generation[1]",
              "'qwen2.5-coder:7' is not a known model or provider/model pair", "qwen2.5-coder:7b"),
        error("routing.capabilities.code_generation[2]",
              "'ollama' is a provider; name a model or a provider/model pair here"),
    ]


def test_capability_entries_cannot_be_capability_routes() -> None:
    """Capability routes are compiled one after another: one listing another would get nothing or part of it."""
    assert check({"routing": {"aliases": {"code": "capability:code_generation", "c2": "code"},
                              "capabilities": {"aa": ["capability:code_generation", "c2", "coder"]}}}) == [
        error("routing.capabilities.aa[0]",
              "'capability:code_generation' is a capability route; name a model or a provider/model pair here"),
        error("routing.capabilities.aa[1]",
              "'c2' is a capability route; name a model or a provider/model pair here"),
    ]


def test_alias_to_itself_is_an_error() -> None:
    assert check({"routing": {"aliases": {"coder2": "coder2"}}}) == [
        error("routing.aliases.coder2", "an alias cannot point at itself"),
        error("fallbacks", "fallback cycle: coder2 → coder2"),
    ]


def test_alias_targets_must_resolve() -> None:
    assert check({"routing": {"aliases": {"fast": "llama3.1:8", "local": "vllm"}}}) == [
        error("routing.aliases.fast", "'llama3.1:8' is not a known model or provider/model pair", "llama3.1:8b"),
        error("routing.aliases.local", "'vllm' is a provider; name a model or a provider/model pair here"),
    ]


def test_aliases_pointing_at_each_other_are_a_cycle() -> None:
    assert check({"routing": {"aliases": {"a": "b", "b": "a"}}}) == [error("fallbacks", "fallback cycle: a → b → a")]


# ---------------------------------------------------------------- providers.yaml


def test_duplicate_model_name_is_a_warning() -> None:
    assert check(providers={"ollama": {"type": "ollama", "models": ["llama3.1:8b", "phi3", "llama3.1:8b"]}}) == [
        warning("providers.ollama.models[2]", "model 'llama3.1:8b' is listed twice", file=P)]


def test_alias_that_is_another_providers_model_is_a_warning() -> None:
    providers = {"ollama": {"type": "ollama", "models": ["llama3"]},
                 "vllm": {"type": "vllm", "models": [{"name": "meta/llama-3", "alias": "llama3"}]}}
    assert check(providers=providers) == [
        warning("providers.vllm.models[0].alias", "alias 'llama3' is also a model of provider 'ollama'; "
                "requests go to both", file=P),
        warning("routing", "model 'llama3' is served by ollama, vllm; they are tried in provider priority order"),
    ]


def test_model_served_by_two_providers_without_a_mapping_is_a_warning() -> None:
    providers = {"ollama": {"type": "ollama", "models": ["llama3.1:8b"]},
                 "vllm": {"type": "vllm", "models": ["llama3.1:8b"]}}
    assert check(providers=providers) == [
        warning("routing", "model 'llama3.1:8b' is served by ollama, vllm; they are tried in provider priority order")]
    assert check({"routing": {"exact_matches": {"llama3.1:8b": {"provider": "vllm"}}}}, providers) == []
    assert check({"routing": {"load_balancing": {"llama3.1:8b": {"deployments": [
        {"provider": "vllm"}, {"provider": "ollama"}]}}}}, providers) == []


def test_provider_rate_limits_and_budget_are_enforced_so_no_warning() -> None:
    providers = {"ollama": {"type": "ollama", "rate_limits": {"rpm": 10}},
                 "vllm": {"type": "vllm", "budget": {"limit_usd": 5}}}
    assert check(providers=providers) == []  # enforced per attempt (docs/limits.md#provider-limits)


def test_warnings_do_not_stop_a_config_from_loading() -> None:
    raw = {"providers": {"providers": PROVIDERS}, "mappings": {"fallbacks": {"llama3.1:8b": ["openai"]}}}
    config = build_config(raw, {"providers": P, "mappings": M}, source="test")
    assert config.warnings == (
        warning("fallbacks.llama3.1:8b[0]", "provider 'openai' is inactive; this target is skipped"),)
