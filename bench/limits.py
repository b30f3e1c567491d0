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

Cases run in interleaved rounds (``--rounds``, each in a rotated order); the CPU figures are medians
over the rounds (``+CPU``: the median of per-round differences from ``off``), p50/p99 over every
request. Nothing here passes or fails on time. The end-to-end req/s ratio (keys+limits+budgets+cost
on vs off, whole gateway processes under wrk) is ``bench/limits_e2e.py``.
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
    """(CPU µs per request — user + system time of this process, ``time.process_time`` —, wall µs per
    request, each request's wall µs)."""
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
    rounds = 1 if args.quick else args.rounds
    config = _config(auth={"master_key_env": "LABGATE_BENCH_MASTER"})
    os.environ["LABGATE_BENCH_MASTER"] = MASTER
    from labgate.runtime import Runtime

    rt = Runtime.build(config)
    route = rt.table.resolve("paid")
    prices = Prices.from_config(config)
    off, keyed = Auth([MASTER]), Auth([MASTER], keyring=_ring())
    limited = _config(auth={"master_key_env": "LABGATE_BENCH_MASTER"})
    memory = Limiter(limited, MemoryCounters(), prices)
    cases: list[tuple[str, Limiter | None, Auth, str, int]] = [
        ("off", None, off, MASTER, n), ("key", None, keyed, SECRET, n),
        ("key+limits+budget (memory)", memory, keyed, SECRET, n)]
    redis_limiter, link = None, None
    if args.redis:
        link = RedisLink(args.redis, timeout_s=1.0, retry_s=1.0, max_connections=8)
        redis_limiter = Limiter(_config(rate_limits={"namespace": f"bench{os.getpid()}"}),
                                RedisCounters(link, max_connections=8), prices)
        cases.append(("key+limits+budget (redis)", redis_limiter, keyed, SECRET, max(n // 10, 500)))
    cpu: dict[str, list[float]] = {name: [] for name, *_ in cases}
    walls: dict[str, list[float]] = {name: [] for name, *_ in cases}
    for number in range(rounds):  # interleaved: every round runs each case, in a rotated order
        turn = number % len(cases)
        for name, limiter, auth, presented, count in cases[turn:] + cases[:turn]:
            per_cpu, _, per_walls = await _per_request(limiter, auth, presented, prices, route, rt.table, count)
            cpu[name].append(per_cpu)
            walls[name].extend(per_walls)
    if link is not None and redis_limiter is not None:
        await link.client.delete(*(await link.client.keys(f"labgate:{{limits:bench{os.getpid()}}}:*")) or ["x"])
        await redis_limiter.aclose()
    await rt.aclose()
    out = {}
    for name in cpu:
        w = sorted(walls[name])
        out[name] = {"cpu_us": round(statistics.median(cpu[name]), 2),
                     "cpu_over_off_us": round(statistics.median(c - o for c, o in zip(cpu[name], cpu["off"],
                                                                                    strict=True)), 2),
                     "p50_us": round(statistics.median(w), 2), "p99_us": round(w[int(len(w) * 0.99)], 2),
                     "rounds": rounds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 2,000 requests per case")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; CPU figures are their medians")
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
