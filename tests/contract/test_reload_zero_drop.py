"""Proof of zero drops: sustained load through a real gateway while its config is reloaded 20 times.

Two simulated engines (``a`` and ``b``) answer slowly enough that requests
and streams are always in flight during a reload. The route ``route`` points
at ``a`` or ``b`` and provider ``b`` is added and removed from one reload to
the next; one reload in the middle is an invalid config, which must be
refused while the previous config keeps serving. Every request must succeed
(every stream must end with ``[DONE]`` and all its tokens), and every
request that starts after a reload was applied must follow that reload's
route. The official ``openai`` SDK drives the load, with its retries off.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI

from labgate.config.reload import ConfigSource, load_files
from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator

RELOADS = 20
INVALID_AT = 10  # the reload whose config is invalid
TOKENS = 12
MESSAGES = [{"role": "user", "content": "hello"}]


@dataclass
class Outcome:
    started: float
    ended: float
    provider: str | None
    ok: bool
    detail: str = ""


def write_config(directory: Path, generation: int, a_url: str, b_url: str) -> str:
    """Generation ``n``: even ones add provider ``b`` and route there, odd ones remove it."""
    with_b = generation % 2 == 0
    providers = {"a": {"type": "openai_compatible", "base_url": a_url + "/v1", "models": ["m"]}}
    if with_b:
        providers["b"] = {"type": "vllm", "base_url": b_url + "/v1", "models": ["m"]}
    (directory / "providers.yaml").write_bytes(orjson.dumps({"providers": providers}))
    target = "b/m" if with_b else "a/m"
    (directory / "model-mappings.yaml").write_bytes(orjson.dumps({"routing": {"aliases": {"route": target}}}))
    (directory / "gateway.yaml").write_text("logging: {requests: false}\nstore: {capture: none}\n"
                                            f"# generation {generation}\n")
    return "b" if with_b else "a"


def write_invalid(directory: Path) -> None:
    (directory / "model-mappings.yaml").write_text("routing:\n  aliases: {route: no-such-model}\n")


async def non_stream(client: AsyncOpenAI) -> Outcome:
    started = time.monotonic()
    try:
        raw = await client.chat.completions.with_raw_response.create(model="route", messages=MESSAGES)
        completion = raw.parse()
        text = completion.choices[0].message.content or ""
        ok = raw.status_code == 200 and len(text.split()) == TOKENS
        return Outcome(started, time.monotonic(), raw.headers.get("x-labgate-provider"), ok, text)
    except Exception as exc:
        return Outcome(started, time.monotonic(), None, False, repr(exc))


async def stream(client: AsyncOpenAI) -> Outcome:
    started = time.monotonic()
    try:
        raw = await client.chat.completions.with_raw_response.create(model="route", messages=MESSAGES, stream=True)
        pieces = []
        finish = None
        async for chunk in raw.parse():
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        text = "".join(pieces)
        ok = raw.status_code == 200 and finish == "stop" and len(text.split()) == TOKENS
        return Outcome(started, time.monotonic(), raw.headers.get("x-labgate-provider"), ok, text)
    except Exception as exc:
        return Outcome(started, time.monotonic(), None, False, repr(exc))


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_twenty_reloads_under_load_drop_nothing(tmp_path: Path) -> None:
    pace = Behaviour(latency_s=0.05, ttft_s=0.05, tokens_per_s=60, completion_tokens=TOKENS)
    async with Simulator(pace, models=["m"]) as sim_a, Simulator(pace, models=["m"]) as sim_b:
        expected = write_config(tmp_path, 0, sim_a.url, sim_b.url)
        loaded = load_files(tmp_path)
        running: RunningGateway = await start_gateway(
            loaded.config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False),
            source=ConfigSource(path=tmp_path), loaded=loaded)
        client = AsyncOpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        outcomes: list[Outcome] = []
        stop = asyncio.Event()

        async def load(kind: str) -> None:
            call = stream if kind == "stream" else non_stream
            while not stop.is_set():
                outcomes.append(await call(client))

        workers = [asyncio.create_task(load(kind)) for kind in ("stream", "plain") * 4]
        # (applied at, provider that the route must use from then on); refused reloads keep the last one
        epochs: list[tuple[float, float, str]] = []
        results = []
        try:
            await asyncio.sleep(0.3)
            applied_at = time.monotonic()
            for n in range(1, RELOADS + 1):
                if n == INVALID_AT:
                    write_invalid(tmp_path)
                else:
                    expected_next = write_config(tmp_path, n, sim_a.url, sim_b.url)
                began = time.monotonic()
                response = await _reload(running)
                results.append(response)
                epochs.append((applied_at, began, expected))
                if response["status"] == "applied":
                    expected = expected_next
                    applied_at = time.monotonic()
                    # a request sent now must follow the new route
                    probe = await non_stream(client)
                    assert (probe.ok, probe.provider) == (True, expected), (n, probe)
                await asyncio.sleep(0.15)
            epochs.append((applied_at, float("inf"), expected))
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*workers)
            await client.close()
        statuses = [r["status"] for r in results]
        assert statuses == ["applied"] * (INVALID_AT - 1) + ["refused"] + ["applied"] * (RELOADS - INVALID_AT)
        refused = results[INVALID_AT - 1]
        assert [e["path"] for e in refused["errors"]] == ["routing.aliases.route"]
        failed = [o for o in outcomes if not o.ok]
        assert failed == [], f"{len(failed)} of {len(outcomes)} requests failed: {failed[:3]}"
        assert len(outcomes) > 100
        spanning = [o for o in outcomes if any(o.started < began < o.ended for _, began, _ in epochs)]
        assert len(spanning) > 40  # requests and streams were in flight across the reloads
        assert sum(o.provider == "b" for o in outcomes) > 10 and sum(o.provider == "a" for o in outcomes) > 10
        # a request that started after a reload was applied (and before the next began) used its route
        for start, end, provider in epochs:
            during = [o for o in outcomes if start < o.started < end]
            assert {o.provider for o in during} <= {provider}, (start, end, provider)
        # every old runtime drained and closed its upstream connections
        for _ in range(100):
            if running.reloader is not None and running.reloader.draining == 0:
                break
            await asyncio.sleep(0.05)
        assert running.reloader is not None and running.reloader.draining == 0
        assert running.reloader.reloads == RELOADS - 1
        await running.stop(grace=2.0)


async def _reload(running: RunningGateway) -> dict[str, Any]:
    """``POST /admin/config/reload`` over HTTP, as an operator's script would."""
    async with aiohttp.ClientSession() as session, session.post(running.url + "/admin/config/reload") as resp:
        body = await resp.json()
        assert resp.status in (200, 422), body
        return body if resp.status == 200 else body["reload"]
