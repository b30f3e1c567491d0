"""Engine load read from a real llama.cpp server's /slots (xllamacpp, tiny generated model, 4 slots)."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from labgate.config.schema.providers import ProviderConfig
from labgate.routing.engines import EngineLoad, load

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.mark.asyncio
async def test_slots_of_a_real_llamacpp_server_show_a_running_generation(llamacpp: Any) -> None:
    config = ProviderConfig.model_validate({"type": "llama_cpp", "base_url": llamacpp.chat_url + "/v1",
                                            "models": ["tiny"], "engine_load": True})
    engine = EngineLoad("llama", config)
    try:
        assert engine.url == llamacpp.chat_url + "/slots"
        assert await engine.poll_once(), engine.last_error
        assert (engine.running, engine.slots) == (0, 4)  # the fixture starts 4 slots
        body = {"model": "tiny", "max_tokens": 800, "stream": True,
                "messages": [{"role": "user", "content": "count"}]}
        async with httpx2.AsyncClient(timeout=30) as http, \
                http.stream("POST", llamacpp.chat_url + "/v1/chat/completions", json=body) as answer:
            assert answer.status_code == 200
            seen = []
            async for _ in answer.aiter_bytes():  # generating: the slot is processing until the stream ends
                assert await engine.poll_once(), engine.last_error
                seen.append(engine.running)
                if len(seen) == 3:
                    break
        assert seen == [1, 1, 1]
        assert load(engine, inflight=0, limit=None) == 0.25  # one of four slots busy
        assert load(engine, inflight=0, limit=2) == 0.5  # max_parallel_requests set: a share of it
    finally:
        await engine.aclose()


@pytest.mark.asyncio
async def test_a_port_that_is_not_llamacpp_gives_unknown_load(llamacpp: Any) -> None:
    config = ProviderConfig.model_validate({"type": "llama_cpp", "base_url": llamacpp.chat_url,
                                            "models": ["tiny"],
                                            "engine_load": {"url": llamacpp.chat_url + "/v1/models/slots"}})
    engine = EngineLoad("llama", config)
    try:
        assert not await engine.poll_once()
        assert engine.busy() is None and engine.last_error
    finally:
        await engine.aclose()
