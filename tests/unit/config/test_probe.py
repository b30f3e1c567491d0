"""``validate --check-providers``: each active provider asked which models it really has."""

from __future__ import annotations

import socket

import pytest

from labgate.config.probe import check_providers
from labgate.testing import Simulator
from labgate.testing.gateway import config_from


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.asyncio
async def test_missing_models_unreachable_engines_and_unset_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROBE_TEST_OPENAI_KEY", raising=False)
    async with Simulator(models=["qwen2.5-coder:7b", "llama3.1:latest"]) as sim:
        config = config_from({
            "ollama": {"type": "ollama", "base_url": sim.url, "models": ["qwen2.5-coder:7", "llama3.1"]},
            "down": {"type": "vllm", "base_url": f"http://127.0.0.1:{closed_port()}", "models": ["m"]},
            "cloud": {"type": "openai", "api_key_env": "PROBE_TEST_OPENAI_KEY", "models": ["gpt-4o"]},
            "off": {"type": "vllm", "base_url": "http://127.0.0.1:9", "status": "inactive"},
        })
        reports = {r.name: r for r in await check_providers(config, timeout=2.0)}
    assert set(reports) == {"ollama", "down", "cloud"}
    ollama = reports["ollama"]
    assert (ollama.reachable, ollama.models) == (True, ("qwen2.5-coder:7b", "llama3.1:latest"))
    # llama3.1 is Ollama's llama3.1:latest; qwen2.5-coder:7 is a typo
    assert [(p.path, p.message, p.severity, p.suggestion) for p in ollama.problems] == [
        ("providers.ollama.models[0]", "ollama does not have model 'qwen2.5-coder:7' (it lists 2 model(s))",
         "error", "qwen2.5-coder:7b")]
    down = reports["down"]
    assert down.reachable is False and [p.severity for p in down.problems] == ["warning"]
    assert down.problems[0].message.startswith("unreachable: cannot connect to provider 'down'")
    assert reports["cloud"].reachable is None
    assert reports["cloud"].problems[0].message == "not checked: $PROBE_TEST_OPENAI_KEY is not set"
