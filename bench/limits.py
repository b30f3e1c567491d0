"""What keys, limits, budgets and cost add to a request, in µs of CPU; and what Redis adds.

    .venv/bin/python bench/limits.py [--quick] [--redis redis://127.0.0.1:6379/0] [--json]

Cases, each the request-path work of one request (nothing else of the gateway):

- ``off``: no virtual keys, no limits: ``Auth.admit`` with the master key, ``Limiter is None``,
  ``Prices.price`` (cost is always computed);
- ``key``: a virtual key (SHA-256 + dict lookup) and its allowed-model check;
- ``key+limits+budget (memory)``: plus ``Limiter.plan`` → ``reserve`` (rpm, tpm, a budget: three
  charges in one take) → ``settle`` on the in-process counters;
- ``… (redis)``: the same on Redis (``--redis``): one script call to take, one to settle, timed as
  wall time per request (p50, p99) and as this process's CPU per request.

Prints µs per request and the ratios against ``off``; nothing here passes or fails on time. The
end-to-end req/s ratio (keys+limits+budgets+cost on vs off) comes from bench/gateway.py runs with
the two configs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import orjson

from labgate.auth import Auth
from labgate.cost import Prices
from labgate.keys import KeyRing, check_model, digest
from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.state.counters import MemoryCounters, RedisCounters
from labgate.state.limits import Limiter
from labgate.state.redis import RedisLink
from labgate.testing.gateway import config_from

SECRET = "lg-" + "b" * 43
MASTER = "sk-bench-master-0123456789"
BODY = orjson.dumps({"model": "paid", "max_tokens": 64, "messages": [{"role": "user", "content": "hello " * 40}]})


def _config(**gateway: Any) -> Any:
    return config_from({"cloud": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                  "models": [{"name": "paid", "pricing": {"input_per_1m": 1, "output_per_1m": 2}}]}},
                       gateway=gateway)


def _ring() -> KeyRing:
    ring = KeyRing(store=None)  # type: ignore[arg-type]  # keys applied by hand: no store
    ring.apply({"id": "key_b", "hash": digest(SECRET), "hint": "bbbb", "name": "bench", "project": "lab",
                "team": None, "models": '["pa*"]', "expires_at": None, "revoked_at": None, "rpm": 10**9,
                "tpm": 10**12, "budget_usd": 1e12, "budget_period": "month", "created_at": 1.0, "updated_at": 1.0})
    return ring


def _record(payload: dict[str, Any]) -> RequestRecord:
    record = RequestRecord(request_id="r", endpoint="chat")
    record.model, record.payload, record.body = "paid", payload, BODY
    return record


async def _per_request(limiter: Limiter | None, auth: Auth, presented: str, prices: Prices, route: Any,
                       table: Any, n: int) -> tuple[float, float, list[float]]:
    """(CPU µs per request, wall µs per request, each request's wall µs)."""
    payload = orjson.loads(BODY)
    walls: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        record = _record(payload)
        record.key_id, key = auth.admit(presented)
        if key is not None:
            record.api_key = key
            check_model(key, "paid")
        if limiter is not None and limiter.plan(record):
            await limiter.reserve(record, route, table)
        record.provider, record.deployment, record.attempts = "cloud", "cloud/paid", 1
        record.usage, record.finished = Usage(240, 30), record.started + 0.1
        record.cost = prices.price(record)
        if record.reservation is not None:
            limiter.settle(record)  # type: ignore[union-attr]
        walls.append((time.perf_counter() - t) * 1e6)
    if limiter is not None:
        await limiter.drain()
    return ((time.process_time() - cpu0) * 1e6 / n, (time.perf_counter() - wall0) * 1e6 / n, walls)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    n = 2000 if args.quick else 20000
    config = _config(auth={"master_key_env": "LABGATE_BENCH_MASTER"})
    os.environ["LABGATE_BENCH_MASTER"] = MASTER
    from labgate.runtime import Runtime

    rt = Runtime.build(config)
    route = rt.table.resolve("paid")
    prices = Prices.from_config(config)
    results: dict[str, Any] = {}
    off = Auth([MASTER])
    results["off"] = await _per_request(None, off, MASTER, prices, route, rt.table, n)
    keyed = Auth([MASTER], keyring=_ring())
    results["key"] = await _per_request(None, keyed, SECRET, prices, route, rt.table, n)
    limited = _config(auth={"master_key_env": "LABGATE_BENCH_MASTER"})
    memory = Limiter(limited, MemoryCounters(), prices)
    results["key+limits+budget (memory)"] = await _per_request(memory, keyed, SECRET, prices, route, rt.table, n)
    if args.redis:
        link = RedisLink(args.redis, timeout_s=1.0, retry_s=1.0, max_connections=8)
        redis_limiter = Limiter(_config(rate_limits={"namespace": f"bench{os.getpid()}"}),
                                RedisCounters(link, max_connections=8), prices)
        results["key+limits+budget (redis)"] = await _per_request(redis_limiter, keyed, SECRET, prices, route,
                                                                  rt.table, max(n // 10, 500))
        await link.client.delete(*(await link.client.keys(f"labgate:{{limits:bench{os.getpid()}}}:*")) or ["x"])
        await redis_limiter.aclose()
    await rt.aclose()
    base_cpu = results["off"][0]
    out = {}
    for name, (cpu, wall, walls) in results.items():
        walls.sort()
        out[name] = {"cpu_us": round(cpu, 2), "wall_us": round(wall, 2), "p50_us": round(statistics.median(walls), 2),
                     "p99_us": round(walls[int(len(walls) * 0.99)], 2), "cpu_over_off_us": round(cpu - base_cpu, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--redis", help="also measure the Redis backend at this URL")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(main_async(args))
    if args.json:
        print(orjson.dumps(out).decode())
        return
    print(f"{'case':32} {'CPU µs':>8} {'+CPU µs':>8} {'p50 µs':>8} {'p99 µs':>8}")
    for name, r in out.items():
        print(f"{name:32} {r['cpu_us']:8.2f} {r['cpu_over_off_us']:8.2f} {r['p50_us']:8.2f} {r['p99_us']:8.2f}")


if __name__ == "__main__":
    main()
