"""The route table: every way a requested name becomes ordered groups of deployments."""

from __future__ import annotations

import math
from typing import Any

import pytest

from labgate.config.load import build_config
from labgate.config.schema.providers import ModelConfig
from labgate.errors import ModelNotFoundError
from labgate.routing.table import Route, RouteTable

PROVIDERS: dict[str, Any] = {
    "ollama": {"type": "ollama", "priority": 1, "timeout_s": 120, "models": [
        "llama3.1:8b",
        {"name": "qwen2.5-coder:7b", "alias": "coder", "capabilities": ["code_generation"]},
    ]},
    "vllm": {"type": "vllm", "priority": 5, "models": [
        {"name": "Qwen/Qwen2.5-7B-Instruct", "alias": "qwen-7b", "capabilities": ["chat", "code_generation"]},
        "llama3.1:8b",
    ]},
    "cpp": {"type": "llama_cpp", "models": [{"name": "local-gguf", "capabilities": ["chat"]}]},
    "openai": {"type": "openai", "status": "inactive", "models": ["gpt-4o"]},
}


class FakeAdapter:
    """The table only stores adapters; it never calls them."""

    endpoints = frozenset({"chat"})

    def __init__(self, name: str) -> None:
        self.name = name


def table(mappings: dict[str, Any] | None = None, providers: dict[str, Any] | None = None) -> RouteTable:
    providers = PROVIDERS if providers is None else providers
    config = build_config({"providers": {"providers": providers}, "mappings": mappings or {}}, {}, source="test")
    return RouteTable(config, {name: FakeAdapter(name) for name in providers})  # type: ignore[misc]


def keys(route: Route) -> list[list[str]]:
    """A route as its groups of deployment keys, in order."""
    return [[d.key for d in g.deployments] for g in route.groups]


# ---------------------------------------------------------------- names providers list


def test_provider_model_name_routes_to_its_deployment() -> None:
    t = table()
    route = t.resolve("local-gguf")
    dep = route.groups[0].deployments[0]
    assert (route.name, keys(route)) == ("local-gguf", [["cpp/local-gguf"]])
    assert (dep.key, dep.provider, dep.model, dep.adapter.name, dep.timeout, dep.info) == (  # type: ignore[attr-defined]
        "cpp/local-gguf", "cpp", "local-gguf", "cpp", 60.0, ModelConfig(name="local-gguf", capabilities=("chat",)))


def test_model_alias_routes_to_the_same_deployment() -> None:
    t = table()
    by_alias, by_name = t.resolve("coder"), t.resolve("qwen2.5-coder:7b")
    assert keys(by_alias) == keys(by_name) == [["ollama/qwen2.5-coder:7b"]]
    assert by_alias.groups[0].deployments[0] is by_name.groups[0].deployments[0]
    assert by_alias.groups[0].deployments[0].model == "qwen2.5-coder:7b"


def test_model_name_containing_a_slash_is_a_model_not_a_pair() -> None:
    assert keys(table().resolve("Qwen/Qwen2.5-7B-Instruct")) == [["vllm/Qwen/Qwen2.5-7B-Instruct"]]


def test_same_model_on_two_providers_is_ordered_by_priority() -> None:
    assert keys(table().resolve("llama3.1:8b")) == [["ollama/llama3.1:8b", "vllm/llama3.1:8b"]]
    providers = {**PROVIDERS, "ollama": {**PROVIDERS["ollama"], "priority": 9}}
    assert keys(table(providers=providers).resolve("llama3.1:8b")) == [["vllm/llama3.1:8b", "ollama/llama3.1:8b"]]


def test_inactive_providers_are_not_routed() -> None:
    t = table({"fallbacks": {"local-gguf": ["openai", "openai/gpt-4o", "coder"]}})
    assert keys(t.resolve("local-gguf")) == [["cpp/local-gguf"], ["ollama/qwen2.5-coder:7b"]]
    for name in ("gpt-4o", "openai/gpt-4o"):
        with pytest.raises(ModelNotFoundError):
            t.resolve(name)
    assert sorted(t.deployments) == ["cpp/local-gguf", "ollama/llama3.1:8b", "ollama/qwen2.5-coder:7b",
                                     "vllm/Qwen/Qwen2.5-7B-Instruct", "vllm/llama3.1:8b"]


def test_unknown_model_says_did_you_mean() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        table().resolve("codr")
    assert (info.value.status, info.value.param, info.value.suggestions, info.value.message) == (
        404, "model", ("coder",),
        "The model 'codr' does not exist or is not routed by this gateway. Did you mean 'coder'?")


def test_unknown_model_without_a_close_name() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        table().resolve("mistral-large")
    assert (info.value.suggestions, info.value.message) == (
        (), "The model 'mistral-large' does not exist or is not routed by this gateway.")


# ---------------------------------------------------------------- routing.exact_matches, patterns, pairs


def test_exact_match_renames_to_the_upstream_model_and_shares_its_deployment() -> None:
    t = table({"routing": {"exact_matches": {"general": {"provider": "vllm", "model": "qwen-7b"},
                                             "phi3": {"provider": "cpp"}}}})
    general = t.resolve("general")
    assert keys(general) == [["vllm/Qwen/Qwen2.5-7B-Instruct"]]
    assert general.groups[0].deployments[0] is t.resolve("qwen-7b").groups[0].deployments[0]
    phi = t.resolve("phi3").groups[0].deployments[0]
    assert (phi.key, phi.model, phi.info) == ("cpp/phi3", "phi3", None)


def test_exact_match_overrides_the_providers_listing() -> None:
    t = table({"routing": {"exact_matches": {"llama3.1:8b": {"provider": "vllm"}}}})
    assert keys(t.resolve("llama3.1:8b")) == [["vllm/llama3.1:8b"]]


def test_pattern_routes_unlisted_names_with_a_glob() -> None:
    t = table({"routing": {"patterns": [{"pattern": "llama*", "provider": "ollama"},
                                        {"pattern": "*:7b", "provider": "vllm"}]}})
    assert keys(t.resolve("llama2:13b")) == [["ollama/llama2:13b"]]
    assert keys(t.resolve("mistral:7b")) == [["vllm/mistral:7b"]]
    assert keys(t.resolve("llama3.1:8b")) == [["ollama/llama3.1:8b", "vllm/llama3.1:8b"]]  # listed wins
    assert t.resolve("llama2:13b") is t.resolve("llama2:13b")  # made once, then looked up
    with pytest.raises(ModelNotFoundError):
        t.resolve("phi3")


def test_pattern_to_an_inactive_provider_matches_nothing() -> None:
    t = table({"routing": {"patterns": [{"pattern": "gpt-*", "provider": "openai"}]}})
    with pytest.raises(ModelNotFoundError):
        t.resolve("gpt-4o-mini")


def test_provider_model_pair() -> None:
    t = table()
    assert keys(t.resolve("vllm/qwen-7b")) == [["vllm/Qwen/Qwen2.5-7B-Instruct"]]  # alias → upstream name
    assert keys(t.resolve("cpp/other.gguf")) == [["cpp/other.gguf"]]  # unlisted names pass through
    assert keys(t.resolve("vllm/Qwen/Qwen2.5-7B-Instruct")) == [["vllm/Qwen/Qwen2.5-7B-Instruct"]]
    assert t.resolve("ollama/llama3.1:8b").groups[0].deployments[0] is t.deployments["ollama/llama3.1:8b"]


# ---------------------------------------------------------------- capabilities and load balancing


def test_capability_route_follows_the_configured_order() -> None:
    t = table({"routing": {"capabilities": {"code_generation": ["qwen-7b", "coder", "cpp/local-gguf"]}}})
    route = t.resolve("capability:code_generation")
    assert (route.name, keys(route)) == ("capability:code_generation", [
        ["vllm/Qwen/Qwen2.5-7B-Instruct"], ["ollama/qwen2.5-coder:7b"], ["cpp/local-gguf"]])


def test_capability_route_without_a_mapping_uses_provider_priority() -> None:
    t = table()
    assert keys(t.resolve("capability:code_generation")) == [
        ["ollama/qwen2.5-coder:7b"], ["vllm/Qwen/Qwen2.5-7B-Instruct"]]
    assert keys(t.resolve("capability:chat")) == [["vllm/Qwen/Qwen2.5-7B-Instruct"], ["cpp/local-gguf"]]


def test_load_balancing_group_has_its_strategy_and_weights() -> None:
    t = table({"routing": {"load_balancing": {"pool": {"strategy": "weighted", "deployments": [
        {"provider": "ollama", "model": "llama3.1:8b", "weight": 3},
        {"provider": "openai", "model": "gpt-4o", "weight": 5},
        {"provider": "vllm", "model": "qwen-7b"}]}}}})
    group = t.resolve("pool").groups[0]
    assert ([d.key for d in group.deployments], group.strategy, group.weights) == (
        ["ollama/llama3.1:8b", "vllm/Qwen/Qwen2.5-7B-Instruct"], "weighted", (3.0, 1.0))
    assert group.deployments[0] is t.deployments["ollama/llama3.1:8b"]


def test_load_balancing_defaults_to_least_busy_under_the_models_own_name() -> None:
    t = table({"routing": {"load_balancing": {"llama3.1:8b": {"deployments": [
        {"provider": "vllm"}, {"provider": "ollama"}]}}}})
    group = t.resolve("llama3.1:8b").groups[0]
    assert ([d.key for d in group.deployments], group.strategy, group.weights) == (
        ["vllm/llama3.1:8b", "ollama/llama3.1:8b"], "least_busy", (1.0, 1.0))


# ---------------------------------------------------------------- fallback chains


def test_exact_match_chain_adds_one_group_per_entry() -> None:
    t = table({"routing": {"exact_matches": {"general": {
        "provider": "ollama", "model": "llama3.1:8b",
        "fallback_chain": ["qwen-7b", "cpp/local-gguf", "llama3.1:8b"]}}}})
    assert keys(t.resolve("general")) == [
        ["ollama/llama3.1:8b"], ["vllm/Qwen/Qwen2.5-7B-Instruct"], ["cpp/local-gguf"],
        ["ollama/llama3.1:8b", "vllm/llama3.1:8b"]]


def test_a_fallback_contributes_only_its_primary_group() -> None:
    t = table({"fallbacks": {"coder": ["qwen-7b"], "qwen-7b": ["local-gguf"]}})
    assert keys(t.resolve("coder")) == [["ollama/qwen2.5-coder:7b"], ["vllm/Qwen/Qwen2.5-7B-Instruct"]]


def test_fallbacks_by_name_and_by_glob() -> None:
    t = table({"fallbacks": {"coder": ["qwen-7b"], "*": ["local-gguf"]},
               "routing": {"patterns": [{"pattern": "llama*", "provider": "ollama", "fallback_chain": ["coder"]},
                                        {"pattern": "phi*", "provider": "cpp"}]}})
    assert keys(t.resolve("coder")) == [["ollama/qwen2.5-coder:7b"], ["vllm/Qwen/Qwen2.5-7B-Instruct"]]
    assert keys(t.resolve("qwen-7b")) == [["vllm/Qwen/Qwen2.5-7B-Instruct"], ["cpp/local-gguf"]]
    assert keys(t.resolve("llama2")) == [["ollama/llama2"], ["ollama/qwen2.5-coder:7b"]]  # the pattern's own chain
    assert keys(t.resolve("phi3")) == [["cpp/phi3"], ["cpp/local-gguf"]]
    assert keys(t.resolve("vllm/x")) == [["vllm/x"], ["cpp/local-gguf"]]


def test_own_chain_wins_over_fallbacks() -> None:
    t = table({"routing": {"exact_matches": {"general": {"provider": "ollama", "model": "llama3.1:8b",
                                                         "fallback_chain": ["coder"]}}},
               "fallbacks": {"general": ["qwen-7b"], "*": ["local-gguf"]}})
    assert keys(t.resolve("general")) == [["ollama/llama3.1:8b"], ["ollama/qwen2.5-coder:7b"]]


def test_provider_name_in_a_chain_means_the_same_model_there() -> None:
    providers = {**PROVIDERS, "cpp": {"type": "llama_cpp", "models": [{"name": "g.gguf", "alias": "general"}]}}
    t = table({"routing": {"exact_matches": {"general": {"provider": "ollama", "model": "llama3.1:8b"}}},
               "fallbacks": {"llama3.1:8b": ["cpp"], "general": ["cpp"], "qwen-7b": ["openai", "ollama"]}},
              providers)
    assert keys(t.resolve("llama3.1:8b")) == [["ollama/llama3.1:8b", "vllm/llama3.1:8b"], ["cpp/llama3.1:8b"]]
    assert keys(t.resolve("general")) == [["ollama/llama3.1:8b"], ["cpp/g.gguf"]]  # cpp's alias → its name
    # not listed there: the primary deployment's upstream name is sent (the inactive openai is skipped)
    assert keys(t.resolve("qwen-7b")) == [["vllm/Qwen/Qwen2.5-7B-Instruct"], ["ollama/Qwen/Qwen2.5-7B-Instruct"]]


def test_a_chain_entry_a_pattern_matches_is_that_patterns_provider_with_the_name_as_the_model() -> None:
    t = table({"routing": {"patterns": [{"pattern": "llama*", "provider": "ollama"},
                                        {"pattern": "gpt-*", "provider": "openai"}]},
               "fallbacks": {"coder": ["llama2", "gpt-5", "local-gguf"], "llama3*": ["cpp"]}})
    # gpt-5: its pattern's provider is inactive, so it contributes nothing
    assert keys(t.resolve("coder")) == [["ollama/qwen2.5-coder:7b"], ["ollama/llama2"], ["cpp/local-gguf"]]
    # a provider entry after a name only a pattern routes: the same name on that provider
    assert keys(t.resolve("llama3-custom")) == [["ollama/llama3-custom"], ["cpp/llama3-custom"]]


def test_a_capability_in_a_chain_contributes_every_group_other_entries_one() -> None:
    t = table({"fallbacks": {"local-gguf": ["capability:code_generation", "llama3.1:8b"]}})
    assert keys(t.resolve("local-gguf")) == [
        ["cpp/local-gguf"], ["ollama/qwen2.5-coder:7b"], ["vllm/Qwen/Qwen2.5-7B-Instruct"],
        ["ollama/llama3.1:8b", "vllm/llama3.1:8b"]]


def test_a_name_routed_by_a_pattern_and_its_pair_share_one_deployment() -> None:
    t = table({"routing": {"patterns": [{"pattern": "llama*", "provider": "ollama"}]}})
    by_pattern = t.resolve("llama2").groups[0].deployments[0]
    assert by_pattern.key == "ollama/llama2"
    assert t.resolve("ollama/llama2").groups[0].deployments[0] is by_pattern  # one circuit, one count


# ---------------------------------------------------------------- aliases


def test_alias_routes_like_its_target_fallbacks_included() -> None:
    t = table({"routing": {"aliases": {"default": "general", "fast": "llama3.1:8b"},
                           "exact_matches": {"general": {"provider": "ollama", "model": "llama3.1:8b",
                                                         "fallback_chain": ["qwen-7b"]}}}})
    assert keys(t.resolve("default")) == keys(t.resolve("general")) == [
        ["ollama/llama3.1:8b"], ["vllm/Qwen/Qwen2.5-7B-Instruct"]]
    assert t.resolve("default").groups == t.resolve("general").groups  # the same group objects
    assert keys(t.resolve("fast")) == [["ollama/llama3.1:8b", "vllm/llama3.1:8b"]]
    assert [t.resolve(name).name for name in ("default", "fast")] == ["default", "fast"]  # its own name


@pytest.mark.parametrize("aliases", [{"a": "b", "b": "coder"}, {"b": "coder", "a": "b"}])
def test_alias_to_alias_in_either_order(aliases: dict[str, str]) -> None:
    t = table({"routing": {"aliases": aliases}})
    assert (keys(t.resolve("a")), keys(t.resolve("b"))) == ([["ollama/qwen2.5-coder:7b"]],) * 2


def test_alias_to_a_pattern_pair_or_capability() -> None:
    t = table({"routing": {"aliases": {"l2": "llama2", "pinned": "vllm/llama3.1:8b",
                                       "code": "capability:code_generation"},
                           "patterns": [{"pattern": "llama*", "provider": "ollama"}]},
               "fallbacks": {"llama2": ["coder"]}})
    assert keys(t.resolve("l2")) == [["ollama/llama2"], ["ollama/qwen2.5-coder:7b"]]
    assert keys(t.resolve("pinned")) == [["vllm/llama3.1:8b"]]
    assert keys(t.resolve("code")) == [["ollama/qwen2.5-coder:7b"], ["vllm/Qwen/Qwen2.5-7B-Instruct"]]


def test_alias_to_a_capability_under_a_catch_all_pattern() -> None:
    t = table({"routing": {"aliases": {"code": "capability:code_generation"},
                           "patterns": [{"pattern": "*", "provider": "cpp"}]}})
    assert keys(t.resolve("code")) == [["ollama/qwen2.5-coder:7b"], ["vllm/Qwen/Qwen2.5-7B-Instruct"]]
    assert sorted(t.deployments) == ["cpp/local-gguf", "ollama/llama3.1:8b", "ollama/qwen2.5-coder:7b",
                                     "vllm/Qwen/Qwen2.5-7B-Instruct", "vllm/llama3.1:8b"]


def test_every_static_route_is_listed() -> None:
    t = table({"routing": {"aliases": {"default": "coder"}}})
    assert sorted(t.routes) == ["Qwen/Qwen2.5-7B-Instruct", "capability:chat", "capability:code_generation",
                                "coder", "default", "llama3.1:8b", "local-gguf", "qwen-7b", "qwen2.5-coder:7b"]


def test_fallback_chain_may_name_aliases_and_capability_routes() -> None:
    providers = {
        "ollama": {"type": "ollama", "models": [{"name": "llama3.1:8b"},
                                                {"name": "qwen2.5-coder:7b", "capabilities": ["code"]}]},
        "cpp": {"type": "llama_cpp", "models": ["local-gguf"]},
    }
    t = table({"routing": {"aliases": {"fast": "local-gguf"}},
               "fallbacks": {"llama3.1:8b": ["fast", "capability:code"]}}, providers)
    assert keys(t.resolve("llama3.1:8b")) == [["ollama/llama3.1:8b"], ["cpp/local-gguf"],
                                              ["ollama/qwen2.5-coder:7b"]]


def test_provider_fallback_for_a_provider_model_pair_uses_the_model_part() -> None:
    providers = {"ollama": {"type": "ollama", "models": ["llama3.1:8b"]},
                 "cpp": {"type": "llama_cpp", "models": ["local-gguf"]}}
    t = table({"fallbacks": {"*": ["ollama"]}}, providers)
    assert keys(t.resolve("cpp/local-gguf")) == [["cpp/local-gguf"], ["ollama/local-gguf"]]


def test_names_clients_invent_do_not_grow_memory_without_bound() -> None:
    """``provider/anything`` makes a deployment on the fly; clients choose the names, so those are bounded."""
    from labgate.routing import table as module

    t = table()
    configured = dict(t.deployments)
    for i in range(module._DYNAMIC_CACHE + 10):
        route = t.resolve(f"cpp/invented-{i}")
        assert keys(route) == [[f"cpp/invented-{i}"]]
    assert dict(t.deployments) == configured  # the config's deployments only
    assert len(t._dynamic) <= module._DYNAMIC_CACHE
    assert len(t._dynamic_deployments) <= module._DYNAMIC_CACHE
    assert t.resolve("cpp/invented-3").groups[0].deployments[0].model == "invented-3"  # made again when asked


# ---------------------------------------------------------------- reload: state of unchanged providers


def reloaded(providers: dict[str, Any], previous: RouteTable) -> RouteTable:
    config = build_config({"providers": {"providers": providers}, "mappings": {}}, {}, source="test")
    return RouteTable(config, {name: FakeAdapter(name) for name in providers},  # type: ignore[misc]
                      previous=previous)


def test_a_reload_keeps_circuit_and_capacity_state_of_unchanged_providers_only() -> None:
    """Issue 17 item 7: circuit state survives a reload for deployments that did not change."""
    before = {"a": {"type": "ollama", "models": ["m"], "max_parallel_requests": 2},
              "b": {"type": "ollama", "models": ["n"], "max_parallel_requests": 2}}
    old = table(providers=before)
    for key in ("a/m", "b/n"):
        old.deployments[key].health.failures = 2
    old.gates["a"].try_acquire()
    after = {**before, "b": {**before["b"], "timeout_s": 5}}  # b changed, a did not
    new = reloaded(after, old)
    assert (new.deployments["a/m"].health is old.deployments["a/m"].health, new.gates["a"] is old.gates["a"],
            new.deployments["a/m"].gate is old.gates["a"], new.gates["a"].inflight) == (True, True, True, 1)
    assert (new.deployments["b/n"].health.failures, new.gates["b"] is old.gates["b"]) == (0, False)


def test_a_deployment_carries_its_providers_settings_and_one_object_serves_every_route_to_it() -> None:
    providers = {
        "gpu": {"type": "vllm", "base_url": "http://gpu:8000/v1", "region": "eu", "max_parallel_requests": 4,
                "engine_load": {}, "models": [{"name": "big", "alias": "b"}]},
        "spare": {"type": "openai_compatible", "base_url": "http://spare/v1", "failover_only": True, "max_queue": 3,
                  "max_parallel_requests": 2, "models": ["big"]},
    }
    routes = table({"routing": {"prefer_local_under": 0.5}}, providers)
    gpu = routes.resolve("gpu/big").groups[0].deployments[0]
    spare = routes.resolve("spare/big").groups[0].deployments[0]
    assert (gpu.key, gpu.health.key, gpu.region, gpu.failover_only, gpu.local, gpu.capacity) == (
        "gpu/big", "gpu/big", "eu", False, True, 4)
    assert (gpu.gate, gpu.engine) == (routes.gates["gpu"], routes.engines["gpu"])
    assert (routes.engines["gpu"].name, routes.engines["gpu"].url) == ("gpu", "http://gpu:8000/metrics")
    assert (spare.failover_only, spare.local, spare.engine, spare.region) == (True, False, None, None)
    assert [(g.limit, g.max_queue, g.spill_at) for g in (routes.gates["gpu"], routes.gates["spare"])] == [
        (4, 256, 2.0), (2, 3, 1.0)]  # queue.max_queue_size unless the provider's max_queue; × prefer_local_under
    assert table(None, providers).gates["gpu"].spill_at == 4  # no prefer_local_under: the whole limit
    assert routes.resolve("b").groups[0].deployments[0] is gpu  # alias, pair and model: one deployment
    assert routes.resolve("gpu/b").groups[0].deployments[0] is gpu
    assert routes.resolve("b").name == "b" and routes.resolve("gpu/big").name == "gpu/big"
    invented = routes.resolve("gpu/other").groups[0].deployments[0]
    assert routes.resolve("gpu/other").groups[0].deployments[0] is invented  # made once, then found
    assert (invented.key, invented.gate, invented.engine) == ("gpu/other", routes.gates["gpu"], routes.engines["gpu"])


def test_releasing_an_attempt_gives_back_its_count_and_its_providers_gate_slot() -> None:
    providers = {"gpu": {"type": "vllm", "max_parallel_requests": 2, "models": ["big"]},
                 "free": {"type": "vllm", "models": ["small"]}}
    routes = table(None, providers)
    gated, free = (routes.resolve(name).groups[0].deployments[0] for name in ("big", "small"))
    assert routes.gates["gpu"].try_acquire() and routes.gates["gpu"].try_acquire()
    gated.health.inflight = free.health.inflight = 2
    gated.release()
    free.release()  # no gate: only its count
    assert (gated.health.inflight, routes.gates["gpu"].inflight, free.health.inflight, free.gate) == (1, 1, 1, None)


def test_a_route_is_local_first_only_when_its_primary_group_says_so() -> None:
    routes = table()
    assert [r.local_first for r in (Route("x", ()), routes.resolve("llama3.1:8b"))] == [False, False]


def test_marking_a_region_down_holds_its_circuits_open_and_back_up_closes_them() -> None:
    providers = {"west": {"type": "openai_compatible", "base_url": "http://w/v1", "region": "us-west-1",
                          "models": ["m", "n"]},
                 "east": {"type": "openai_compatible", "base_url": "http://e/v1", "region": "us-east-1",
                          "models": ["m"]}}
    routes = table(None, providers)
    west = [routes.resolve(f"west/{m}").groups[0].deployments[0] for m in ("m", "n")]
    east = routes.resolve("east/m").groups[0].deployments[0]
    west[1].health.last_error, west[1].health.failures = "earlier", 2
    assert routes.mark_region("us-west-1", down=True) == ["west/m", "west/n"]
    assert [(d.health.open_until, d.health.last_error) for d in west] == [
        (math.inf, "region 'us-west-1' marked down")] * 2
    assert (east.health.open_until, east.health.last_error) == (0.0, None)
    west[0].health.failures = 3  # counted while down (a probe, a request that raced the marking)
    assert routes.mark_region("us-west-1", down=False) == ["west/m", "west/n"]
    assert [(d.health.open_until, d.health.failures, d.health.last_error) for d in west] == [
        (0.0, 0, "region 'us-west-1' marked down")] * 2  # the last error stays as history
    assert routes.mark_region("nowhere", down=True) == []
    east.health.last_error = "timeout"
    assert routes.mark_region("us-east-1", down=False) == ["east/m"]  # up without having been down
    assert (east.health.open_until, east.health.last_error) == (0.0, "timeout")
