"""``labgate export litellm``: labgate's config as a LiteLLM proxy config, and the round trip."""

from __future__ import annotations

from pathlib import Path

import yaml

from labgate.config.load import load_config
from labgate.config.migrate.from_litellm import import_litellm
from labgate.config.migrate.to_litellm import export_litellm
from labgate.testing.gateway import config_from

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"


def test_export_of_a_small_config() -> None:
    config = config_from(
        {"local": {"type": "ollama", "base_url": "http://127.0.0.1:11434/v1", "models": ["llama3.1:8b"]},
         "cloud": {"type": "anthropic", "api_key_env": "ANTHROPIC_API_KEY",
                   "models": [{"name": "claude-sonnet-4-5", "alias": "claude", "context_length": 200000}]}},
        {"routing": {"aliases": {"default": "llama3.1:8b"}, "capabilities": {"chat": ["claude"]}},
         "fallbacks": {"llama3.1:8b": ["claude"], "*": ["cloud"]}},
        {"auth": {"master_key_env": "LABGATE_MASTER_KEY"}})
    doc, notes = export_litellm(config)
    assert doc == {
        "model_list": [
            {"model_name": "llama3.1:8b",
             "litellm_params": {"model": "ollama_chat/llama3.1:8b", "api_base": "http://127.0.0.1:11434"}},
            {"model_name": "claude-sonnet-4-5",
             "litellm_params": {"model": "anthropic/claude-sonnet-4-5", "api_key": "os.environ/ANTHROPIC_API_KEY"},
             "model_info": {"max_input_tokens": 200000}},
            {"model_name": "claude",
             "litellm_params": {"model": "anthropic/claude-sonnet-4-5", "api_key": "os.environ/ANTHROPIC_API_KEY"},
             "model_info": {"max_input_tokens": 200000}},
            {"model_name": "cloud/*",  # the `*` chain names a provider: the same model there
             "litellm_params": {"model": "anthropic/*", "api_key": "os.environ/ANTHROPIC_API_KEY"}},
        ],
        "router_settings": {"fallbacks": [{"llama3.1:8b": ["claude"]}], "default_fallbacks": ["cloud/*"],
                            "model_group_alias": {"default": "llama3.1:8b"}, "num_retries": 3, "allowed_fails": 3,
                            "cooldown_time": 30.0, "timeout": 600.0},
        "general_settings": {"master_key": "os.environ/LABGATE_MASTER_KEY"},
    }
    assert [(n.level, n.path) for n in notes] == [("unmapped", "routing.capabilities.chat")]


def test_the_lab_example_round_trips_through_litellm() -> None:
    config = load_config(EXAMPLES / "lab")
    doc, notes = export_litellm(config)
    assert {n.path for n in notes} >= {"providers.openai", "providers.anthropic",
                                       "routing.capabilities.code_generation"}
    text = yaml.safe_dump(doc, sort_keys=False)
    back = import_litellm(yaml.safe_load(text))
    providers = back.files["providers.yaml"]["providers"]
    active = {n: p for n, p in config.providers.items() if p.status == "active"}
    # llama.cpp goes out as LiteLLM's generic `openai/` + api_base, so it comes back as openai_compatible
    generic = {"llama_cpp": "openai_compatible"}
    assert {p["type"] for p in providers.values()} == {generic.get(p.type, p.type) for p in active.values()}
    models = sorted(m["name"] for p in providers.values() for m in p["models"])
    assert models == sorted({m.name for p in active.values() for m in p.models})
    routing = back.files["model-mappings.yaml"]["routing"]
    assert routing["patterns"] == [{"pattern": "llama*", "provider": "ollama"}]
    assert routing["load_balancing"]["chat-pool"]["strategy"] in ("round_robin", "weighted")
    assert routing["aliases"] == {"default": "general"}
