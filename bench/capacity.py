"""Capacity benchmark: what the gate and the queue cost, and what they buy under overload.

    .venv/bin/python bench/capacity.py [--quick] [--clients 64] [--duration 10] [--redis redis://127.0.0.1:6379/0]

Three measurements, printed as numbers and ratios (never pass/fail):

1. **Hot path, capacity configured but not reached.** ns per call of the attempt
   loop (``routing.attempts.attempt``) over an adapter that answers at once,
   without any gate and with a gate that is never full; the ratio is the
   attempt loop's share of the ≥ 0.95× req/s budget (run ``bench/gateway.py``
   for the whole gateway).
2. **Queue overhead at saturation.** The added time for a request that finds
   its deployment full and is admitted as soon as a slot frees: a waiter is
   queued and the slot handed over, µs p50 (no sockets, one event loop).
3. **Overload, with and without the queue.** Two simulated engines of
   unequal speed (base 20 ms and 80 ms per request, 4 requests at full speed,
   slower in proportion beyond that, as a GPU sharing its batch) behind a
   real gateway, ``--clients`` closed-loop clients for ``--duration`` s:
   without ``max_parallel_requests`` every request piles onto the engines;
   with ``max_parallel_requests: 4`` the excess waits in labgate's queue and
   the balancer (least_busy) sends more to the faster engine. Prints req/s
   and p50/p95/p99 of each, and the p95 ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import httpx2

from labgate.errors import UpstreamError
from labgate.providers.base import Call, Reply
from labgate.record import RequestRecord
from labgate.routing.attempts import attempt
from labgate.routing.circuit import Circuit
from labgate.routing.gate import Gate, Waiter
from labgate.routing.table import Deployment
from labgate.server.serve import start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import config_from

SLOTS = 4  # requests an engine serves at full speed


class Instant:
    """An adapter that answers at once (the attempt loop's own cost is what is measured)."""

    endpoints = frozenset({"chat"})
    reply = Reply(b"{}")

    async def send(self, call: Call) -> Reply:
        return self.reply

    async def stream(self, call: Call) -> Any:
        raise UpstreamError("not used")

    async def aclose(self) -> None:
        pass


async def attempt_ns(gate: Gate | None, n: int) -> float:
    dep = Deployment("p/m", "p", "m", Instant(), 60.0, gate=gate)
    circuit = Circuit(3, 30)
    body: dict[str, Any] = {"model": "m"}
    started = time.perf_counter_ns()
    for _ in range(n):
        await attempt([dep], endpoint="chat", body=body, stream=False, deadline=time.monotonic() + 60,
                      circuit=circuit, record=RequestRecord("r", "chat"))
    return (time.perf_counter_ns() - started) / n


async def handover_us(n: int) -> list[float]:
    """Queue a waiter at a full gate, release the slot, measure until the waiter holds it."""
    gate = Gate(1, max_queue=1)
    gate.try_acquire()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        waiter = Waiter(2, [gate])
        gate.release()
        await waiter.future
        waiter.leave()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def lease_us(url: str, n: int) -> list[float]:
    """With ``state.url``: a slot taken with its lease in Redis (one script call), then given back."""
    from labgate.routing.leases import KEY_PREFIX, Leases
    from labgate.state.redis import RedisLink

    link = RedisLink(url, timeout_s=2.0, retry_s=1.0, max_connections=4)
    gate = Gate(4, max_queue=0)
    gate.shared = leases = Leases(link, key=f"{KEY_PREFIX}:bench-{time.time_ns()}:p", ttl_s=10, poll_s=0.05)
    samples = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            assert await gate.take_shared(prefer=False)
            samples.append((time.perf_counter() - started) * 1e6)
            gate.release()
            await asyncio.gather(*leases._tasks)  # the ZREM, sent in the background by a real release
    finally:
        await leases.aclose()
        await link.aclose()
    return samples


class Shared(Simulator):
    """An engine serving ``SLOTS`` requests at full speed; beyond that each is slower in proportion."""

    def __init__(self, base_s: float) -> None:
        super().__init__(Behaviour(), models=["m"], record=False)
        self.base_s = base_s
        self.active = 0

    async def _serve(self, request: Any, endpoint: Any) -> Any:
        self.active += 1
        try:
            await asyncio.sleep(self.base_s * max(1.0, self.active / SLOTS))
            return await super()._serve(request, endpoint)
        finally:
            self.active -= 1


async def overload(capped: bool, clients: int, duration: float) -> tuple[float, list[float], float]:
    fast, slow = Shared(0.02), Shared(0.08)
    async with fast, slow:
        extra = {"max_parallel_requests": SLOTS, "max_queue": 4096} if capped else {}
        providers = {name: {"type": "openai_compatible", "base_url": sim.url + "/v1", "models": ["m"], **extra}
                     for name, sim in (("fast", fast), ("slow", slow))}
        mappings = {"routing": {"load_balancing": {"m": {"deployments": [{"provider": "fast"},
                                                                        {"provider": "slow"}]}}}}
        running = await start_gateway(config_from(providers, mappings, {"store": {"capture": "none"}}),
                                      host="127.0.0.1", port=0, access_log=AccessLog(enabled=False))
        latencies: list[float] = []
        stop = time.monotonic() + duration
        try:
            async with httpx2.AsyncClient(timeout=120, limits=httpx2.Limits(max_connections=clients)) as http:
                async def client() -> None:
                    while time.monotonic() < stop:
                        started = time.perf_counter()
                        answer = await http.post(running.url + "/v1/chat/completions",
                                                 json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
                        if answer.status_code == 200:
                            latencies.append((time.perf_counter() - started) * 1000)

                began, cpu = time.monotonic(), time.process_time()
                await asyncio.gather(*(client() for _ in range(clients)))
                elapsed, cpu = time.monotonic() - began, time.process_time() - cpu
        finally:
            await running.stop(grace=5)
    return len(latencies) / elapsed, latencies, cpu / max(len(latencies), 1) * 1e6


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


async def main(args: argparse.Namespace) -> None:
    n = 20_000 if args.quick else 200_000
    await attempt_ns(None, n // 4)  # warm-up
    bare = await attempt_ns(None, n)
    gated = await attempt_ns(Gate(10**9, max_queue=0), n)
    print(f"attempt loop, no gate:            {bare:8.0f} ns/request")
    print(f"attempt loop, gate not reached:   {gated:8.0f} ns/request  (+{gated - bare:.0f} ns, ×{gated / bare:.3f})")
    hand = await handover_us(2_000 if args.quick else 20_000)
    print(f"queued, admitted at once:         {statistics.median(hand):8.2f} µs p50 added "
          f"(p99 {pct(hand, 99):.2f} µs)")
    if args.redis:
        lease = await lease_us(args.redis, 200 if args.quick else 2_000)
        print(f"shared capacity (state.url), slot + lease taken: {statistics.median(lease):8.1f} µs p50 "
              f"(p99 {pct(lease, 99):.1f} µs; one Redis script call; the ZREM is off the request path)")
    duration = 2.0 if args.quick else args.duration
    rows = {}
    for capped in (False, True):
        rate, lat, cpu_us = await overload(capped, args.clients, duration)
        rows[capped] = lat
        print(f"overload, {'queue (max_parallel_requests 4)' if capped else 'no capacity limits':32s}"
              f" {rate:7.1f} req/s  p50 {pct(lat, 50):7.1f} ms  p95 {pct(lat, 95):7.1f} ms  "
              f"p99 {pct(lat, 99):7.1f} ms  {cpu_us:6.0f} µs CPU/request (everything: one process)")
    print(f"p95 with the queue ÷ p95 without: {pct(rows[True], 95) / pct(rows[False], 95):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts and 2 s legs (a smoke run)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--redis", metavar="URL", help="also time taking a slot with its Redis lease (state.url)")
    asyncio.run(main(parser.parse_args()))
