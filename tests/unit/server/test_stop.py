"""``RunningGateway.stop``: a shutdown step that takes long is named while it runs."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from labgate.server import serve
from labgate.server.serve import start_gateway
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from

HANG = 30.0  # a wait this long is a hang: the test fails instead of waiting for it


@pytest.mark.asyncio
async def test_a_slow_stop_names_the_step_it_waits_for_until_it_is_done(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(serve, "STOP_WATCH_S", 0.05)
    caplog.set_level(logging.WARNING, logger="labgate.server")
    async with Simulator(Behaviour(latency_s=1.0), models=["m"]) as sim:
        config = config_from({"p": {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"]}},
                             gateway={"store": {"capture": "none"}})
        running = await start_gateway(config, host="127.0.0.1", port=0)
        async with aiohttp.ClientSession() as http:
            async def ask() -> int:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                async with http.post(running.url + "/v1/chat/completions", json=body) as r:
                    await r.read()
                    return r.status

            answer = asyncio.create_task(ask())
            async with asyncio.timeout(HANG):
                while not sim.requests:  # noqa: ASYNC110 (the simulator has no event: in flight once it has it)
                    await asyncio.sleep(0.01)
                await running.stop(grace=HANG)
                assert await answer == 200  # let finish, not cut
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shutdown:")]
        assert said and all(m.startswith("shutdown: still waiting for in-flight requests (") for m in said), said
        await asyncio.sleep(0.2)  # the watch ended with the stop: nothing more is said
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("shutdown:")] == said
