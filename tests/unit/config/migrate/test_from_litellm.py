"""``labgate import litellm`` on LiteLLM proxy configs written from LiteLLM's documented format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from labgate.config.load import build_config
from labgate.config.migrate.from_litellm import import_litellm

EXAMPLES = Path(__file__).parent / "litellm"


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def as_config(files: dict[str, dict[str, Any]]) -> Any:
    raw = {"providers": files["providers.yaml"], "mappings": files.get("model-mappings.yaml", {}),
           "gateway": files.get("gateway.yaml", {})}
    return build_config(raw, {}, source="imported")


def test_the_unified_backend_of_the_seeds() -> None:
    result = import_litellm(example("unified-backend.yaml"))
    assert result.files == {
        "providers.yaml": {"providers": {
            "ollama": {"type": "ollama", "base_url": "http://127.0.0.1:11434",
                       "models": [{"name": "llama3.1:8b", "context_length": 131072}, {"name": "qwen2.5-coder:7b"}]},
            "openai_compatible": {"type": "openai_compatible", "base_url": "http://127.0.0.1:8080/v1",
                                  "models": [{"name": "local-gguf"}]},
            "vllm": {"type": "vllm", "base_url": "http://127.0.0.1:8001/v1",
                     "models": [{"name": "Qwen/Qwen2.5-7B-Instruct"}], "rate_limits": {"rpm": 600}},
            "vllm_8002": {"type": "vllm", "base_url": "http://127.0.0.1:8002/v1",
                          "models": [{"name": "Qwen/Qwen2.5-7B-Instruct"}]},
            "openai": {"type": "openai", "api_key_env": "OPENAI_API_KEY",
                       "models": [{"name": "gpt-4o", "pricing": {"input_per_1m": 2.5, "output_per_1m": 10.0}},
                                  {"name": "text-embedding-3-small", "tags": ["embeddings"]}]},
            "anthropic": {"type": "anthropic", "api_key_env": "ANTHROPIC_API_KEY",
                          "models": [{"name": "claude-sonnet-4-5"}]},
        }},
        "model-mappings.yaml": {
            "routing": {
                "exact_matches": {"qwen-coder": {"provider": "ollama", "model": "qwen2.5-coder:7b"},
                                  "llama-cpp-local": {"provider": "openai_compatible", "model": "local-gguf"},
                                  "claude": {"provider": "anthropic", "model": "claude-sonnet-4-5"}},
                "load_balancing": {"qwen-7b": {"strategy": "weighted", "deployments": [
                    {"provider": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct", "weight": 2.0},
                    {"provider": "vllm_8002", "model": "Qwen/Qwen2.5-7B-Instruct", "weight": 1.0}]}},
                "aliases": {"default": "llama3.1:8b"},
            },
            "fallbacks": {"llama3.1:8b": ["qwen-7b", "claude"], "qwen-coder": ["gpt-4o"]},
        },
        "gateway.yaml": {"resilience": {"max_attempts": 3, "circuit": {"failure_threshold": 3, "cooldown_s": 60}},
                         "server": {"request_timeout_s": 30}, "auth": {"master_key_env": "LITELLM_MASTER_KEY"}},
    }
    assert [(n.level, n.path) for n in result.notes] == [
        ("unmapped", "model_list[7].litellm_params.model"),  # gemini/: no adapter
        ("unmapped", "model_list[8].litellm_params.api_key"),  # a literal key is never copied
        ("unmapped", "router_settings.context_window_fallbacks"),
        ("approximate", "router_settings.num_retries"),
        ("unmapped", "router_settings.redis_host"),
        ("unmapped", "router_settings.redis_port"),
        ("unmapped", "litellm_settings.cache"),
        ("info", "litellm_settings.drop_params"),
        ("info", "litellm_settings.set_verbose"),
        ("unmapped", "litellm_settings.success_callback"),
        ("unmapped", "general_settings.database_url"),
        ("unmapped", "fallbacks.qwen-coder"),  # its gemini-pro fallback was not imported
    ]
    cache = next(n for n in result.notes if n.path == "litellm_settings.cache")
    assert "redis at 127.0.0.1:6379, ttl 3600 s" in cache.message
    config = as_config(result.files)
    assert config.gateway.auth.master_key_env == "LITELLM_MASTER_KEY"


def test_a_cloud_router_with_wildcards_aliases_and_a_literal_master_key() -> None:
    result = import_litellm(example("cloud-router.yaml"))
    providers = result.files["providers.yaml"]["providers"]
    assert {n: (p["type"], [m["name"] for m in p["models"]]) for n, p in providers.items()} == {
        "openai": ("openai", ["gpt-4o", "gpt-4o-mini"]),  # the azure deployment of gpt-4o is reported
        "anthropic": ("anthropic", ["claude-sonnet-4-5"]),
        "groq": ("openai_compatible", ["llama-3.1-8b-instant"]),
    }
    assert providers["groq"]["base_url"] == "https://api.groq.com/openai/v1"
    assert providers["anthropic"]["models"][0]["capabilities"] == ["tools", "vision"]
    mappings = result.files["model-mappings.yaml"]
    assert mappings["routing"]["patterns"] == [{"pattern": "anthropic/*", "provider": "anthropic"}]
    assert mappings["routing"]["aliases"] == {"gpt-4": "gpt-4o", "smart": "claude-sonnet"}
    assert mappings["fallbacks"] == {"gpt-4o": ["claude-sonnet"], "claude-sonnet": ["gpt-4o-mini"],
                                     "*": ["gpt-4o-mini"]}
    assert result.files["gateway.yaml"] == {"resilience": {"max_attempts": 4}, "server": {"request_timeout_s": 120},
                                            "auth": {"master_key_env": "LABGATE_MASTER_KEY"}}
    assert "azure" in result.notes[0].message and result.notes[-1].path == "general_settings.master_key"
    config = as_config(result.files)
    assert config.mappings.routing.aliases["gpt-4"] == "gpt-4o"


def test_a_local_lab_with_priority_replicas() -> None:
    result = import_litellm(example("local-lab.yaml"))
    assert result.notes == []
    routing = result.files["model-mappings.yaml"]["routing"]
    assert routing["load_balancing"] == {"qwen": {"strategy": "priority", "deployments": [
        {"provider": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct"},
        {"provider": "vllm_10_0_0_5", "model": "Qwen/Qwen2.5-7B-Instruct"}]}}
    providers = result.files["providers.yaml"]["providers"]
    assert providers["vllm"]["max_parallel_requests"] == 32
    assert providers["lmstudio"]["base_url"] == "${LMSTUDIO_API_BASE}"  # os.environ/ → ${VAR}
    assert providers["llama_cpp"] == {"type": "llama_cpp", "base_url": "http://127.0.0.1:8080/v1",
                                      "models": [{"name": "TinyLlama-1.1B"}]}
    assert result.files["gateway.yaml"] == {"resilience": {"circuit": {"cooldown_s": 30}}}


@pytest.mark.parametrize("doc", [{}, {"model_list": "nope"}, {"model_list": [{"model_name": "x"}]}])
def test_degenerate_configs_are_reported_not_crashed(doc: dict[str, Any]) -> None:
    result = import_litellm(doc)
    assert result.files == {"providers.yaml": {"providers": {}}}
    assert len(result.notes) == (0 if not doc else 1)


def test_provider_names_made_from_hosts_are_valid_names() -> None:
    doc = {"model_list": [
        {"model_name": "a", "litellm_params": {"model": "hosted_vllm/a", "api_base": "http://gpu.example:8000/v1"}},
        {"model_name": "b", "litellm_params": {"model": "hosted_vllm/b", "api_base": "http://bücher.example:8000/v1"}},
        {"model_name": "c", "litellm_params": {"model": "hosted_vllm/c",
                                               "api_base": "http://" + "x" * 80 + ".example:8000/v1"}},
    ]}
    result = import_litellm(doc)
    assert list(result.files["providers.yaml"]["providers"]) == [
        "vllm", "vllm_b_cher_example", "vllm_" + "x" * 40]
    assert sorted(as_config(result.files).providers) == ["vllm", "vllm_b_cher_example", "vllm_" + "x" * 40]
