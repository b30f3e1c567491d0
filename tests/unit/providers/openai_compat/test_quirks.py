"""Each OpenAI-compatible engine's quirks, applied to a copy of the client's body."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from labgate.providers.base import ALL_ENDPOINTS
from labgate.providers.openai_compat.quirks import PRESETS, Quirks, adapt_body

OPENAI_ONLY = {"store": True, "service_tier": "auto", "prediction": {"type": "content", "content": "x"},
               "modalities": ["text"], "audio": {"voice": "alloy"}, "reasoning_effort": "low",
               "web_search_options": {}, "safety_identifier": "u1", "prompt_cache_key": "k",
               "verbosity": "low"}
COMMON = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}
EVERYTHING = {**COMMON, **OPENAI_ONLY, "max_completion_tokens": 64, "parallel_tool_calls": False,
              "user": "u1", "metadata": {"k": "v"}, "logit_bias": {"1": 2}}


def without(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in keys}


@pytest.mark.parametrize(("preset", "expected"), [
    ("openai", {**EVERYTHING, "model": "up"}),
    ("openai_compatible", {**EVERYTHING, "model": "up"}),
    ("vllm", {**without(EVERYTHING, *OPENAI_ONLY), "model": "up", "reasoning_effort": "low"}),
    ("llama_cpp", {**without(EVERYTHING, *OPENAI_ONLY, "parallel_tool_calls", "user", "metadata"),
                   "model": "up"}),  # llama.cpp reads max_completion_tokens itself
    ("ollama", {**without(EVERYTHING, *OPENAI_ONLY, "max_completion_tokens", "parallel_tool_calls", "logit_bias",
                          "metadata"), "model": "up", "max_tokens": 64}),
    ("lmstudio", {**without(EVERYTHING, *OPENAI_ONLY, "max_completion_tokens", "parallel_tool_calls", "metadata"),
                  "model": "up", "max_tokens": 64}),
])
def test_each_preset_renames_and_drops(preset: str, expected: dict[str, Any]) -> None:
    body = copy.deepcopy(EVERYTHING)
    assert adapt_body(body, model="up", quirks=PRESETS[preset]) == expected
    assert body == EVERYTHING  # the client's body is reused by fallbacks: never mutated


def test_presets_default_urls_and_keys() -> None:
    assert {name: (q.default_base_url, q.api_key_required, q.endpoints == ALL_ENDPOINTS)
            for name, q in PRESETS.items()} == {
        "openai": ("https://api.openai.com/v1", True, True),
        "openai_compatible": (None, False, True),
        "vllm": ("http://127.0.0.1:8001/v1", False, True),
        "llama_cpp": ("http://127.0.0.1:8080/v1", False, True),
        "ollama": ("http://127.0.0.1:11434/v1", False, True),
        "lmstudio": ("http://127.0.0.1:1234/v1", False, True),
    }


def test_a_body_without_quirky_keys_only_gets_its_model() -> None:
    assert adapt_body(COMMON, model="llama3.1:8b", quirks=PRESETS["ollama"]) == {**COMMON, "model": "llama3.1:8b"}


def test_the_newer_name_wins_when_both_are_sent() -> None:
    body = {**COMMON, "max_tokens": 10, "max_completion_tokens": 99}
    assert adapt_body(body, model="m", quirks=PRESETS["ollama"]) == {**COMMON, "model": "m", "max_tokens": 99}


def test_merging_keeps_the_presets_other_settings() -> None:
    preset = PRESETS["llama_cpp"]
    merged = preset.merged(rename={}, drop=frozenset())
    assert (merged.default_base_url, merged.endpoints, merged.api_key_required, merged.stream_usage,
            merged.rejects, merged.drop, dict(merged.rename)) == (
        preset.default_base_url, preset.endpoints, preset.api_key_required, preset.stream_usage,
        preset.rejects, preset.drop, dict(preset.rename))


def test_user_overrides_are_merged_over_the_preset() -> None:
    merged = PRESETS["ollama"].merged(rename={"seed": "random_seed", "max_completion_tokens": "num_predict"},
                                      drop=frozenset({"temperature"}))
    assert (dict(merged.rename), merged.drop, merged.touches, merged.default_base_url) == (
        {"max_completion_tokens": "num_predict", "seed": "random_seed"},
        PRESETS["ollama"].drop | {"temperature"},
        PRESETS["ollama"].drop | {"temperature", "max_completion_tokens", "seed"},
        "http://127.0.0.1:11434/v1")
    body = {**COMMON, "seed": 7, "max_completion_tokens": 5, "store": True}
    assert adapt_body(body, model="m", quirks=merged) == {
        "model": "m", "messages": COMMON["messages"], "random_seed": 7, "num_predict": 5}


def test_merging_leaves_the_preset_alone() -> None:
    before = (dict(PRESETS["vllm"].rename), PRESETS["vllm"].drop)
    PRESETS["vllm"].merged(rename={"a": "b"}, drop=frozenset({"c"}))
    assert (dict(PRESETS["vllm"].rename), PRESETS["vllm"].drop) == before


def test_empty_quirks_touch_nothing() -> None:
    assert (Quirks().touches, Quirks().stream_usage, Quirks().endpoints) == (frozenset(), True, ALL_ENDPOINTS)
