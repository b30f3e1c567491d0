"""``labgate load`` ("find optimal concurrency") and ``labgate compare-providers``.

    labgate load --model m1 --concurrency 1,4,16,64 --duration 10 [--stream]
    labgate compare-providers --models ollama/llama3.1:8b,vllm/qwen --requests 5

``load`` runs each concurrency level for ``--duration`` seconds (clients sending requests
back to back over kept-alive connections) and prints throughput, latency percentiles and
errors per level; the **knee** is the lowest level whose throughput is within
:data:`KNEE_SHARE` of the best: more concurrency beyond it buys latency, not throughput.
``compare-providers`` sends the same prompts to each model (streams) and prints a table
of latency, time to first token and tokens per second. Both show a progress bar on a
terminal (stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import orjson

from labgate.cli.style import shown
from labgate.cli.test_request import DEFAULT_URL, measure
from labgate.errors import LabgateError
from labgate.providers.http import HttpPool

KNEE_SHARE = 0.9  # the knee: the lowest level reaching this share of the best throughput
REQUEST_TIMEOUT_S = 120.0
PROMPTS = ("Say hello in five words.", "Name three primary colours.", "What is 12 times 12?",
           "Write a haiku about the sea.", "Give one tip for writing clear code.")


def register(commands: Any) -> None:
    p = commands.add_parser("load", help="find the optimal concurrency: throughput and latency per level")
    _common(p)
    p.add_argument("--model", default="default")
    p.add_argument("--concurrency", default="1,4,16,64", help="levels, comma-separated (default 1,4,16,64)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level (default 10)")
    p.add_argument("--stream", action="store_true")
    p.set_defaults(run=_load)
    c = commands.add_parser("compare-providers", help="the same prompts across models: latency and tokens/s")
    _common(c)
    c.add_argument("--models", required=True, help="models to compare, comma-separated (provider/model works)")
    c.add_argument("--requests", type=int, default=len(PROMPTS), help=f"prompts per model (default {len(PROMPTS)})")
    c.set_defaults(run=_compare)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"the gateway (default {DEFAULT_URL})")
    p.add_argument("--key-env", default="LABGATE_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default LABGATE_API_KEY)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print the results as JSON")


@dataclass
class Level:
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        out: dict[str, Any] = {"concurrency": self.concurrency, "ok": len(ordered),
                               "errors": sum(self.errors.values()), "error_causes": dict(self.errors),
                               "req_per_s": round(len(ordered) / self.seconds, 2) if self.seconds else 0.0}
        for p in (50, 95, 99):
            out[f"p{p}_ms"] = round(ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)], 2) if ordered else None
        return out


def knee(levels: list[dict[str, Any]]) -> int | None:
    """The lowest concurrency whose throughput is within KNEE_SHARE of the best one."""
    best = max((lv["req_per_s"] for lv in levels), default=0.0)
    if best <= 0:
        return None
    return min(lv["concurrency"] for lv in levels if lv["req_per_s"] >= KNEE_SHARE * best)


class Progress:
    """A one-line bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, label: str, total: float) -> None:
        self.label, self.total = label, total
        self.enabled = sys.stderr.isatty()

    def show(self, done: float, note: str = "") -> None:
        if self.enabled:
            share = min(done / self.total, 1.0) if self.total else 1.0
            bar = "#" * int(share * 30)
            sys.stderr.write(f"\r{self.label} [{bar:30}] {share:4.0%} {note}\033[K")
            sys.stderr.flush()

    def end(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


async def run_level(pool: HttpPool, path: str, body: bytes, *, concurrency: int, duration: float,
                    stream: bool, label: str = "") -> Level:
    level = Level(concurrency)
    start = time.perf_counter()
    stop = start + duration
    progress = Progress(label or f"c={concurrency}", duration)

    async def client() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                if stream:
                    upstream = await pool.open_stream(path, body, timeout=REQUEST_TIMEOUT_S)
                    async for _ in upstream.chunks():
                        pass
                else:
                    status, _, data = await pool.request("POST", path, body, timeout=REQUEST_TIMEOUT_S)
                    if status >= 300:
                        raise pool.error_for(status, data, {})
            except LabgateError as exc:
                level.errors[exc.code or "error"] = level.errors.get(exc.code or "error", 0) + 1
                continue
            level.latencies_ms.append((time.perf_counter() - t0) * 1000)

    async def report() -> None:
        while (now := time.perf_counter()) < stop:
            progress.show(now - start, f"{len(level.latencies_ms)} ok")
            await asyncio.sleep(0.25)

    ticker = asyncio.create_task(report())
    await asyncio.gather(*(client() for _ in range(concurrency)))
    ticker.cancel()
    progress.end()
    level.seconds = time.perf_counter() - start
    return level


async def load(url: str, model: str, levels: list[int], *, duration: float, stream: bool, key: str | None,
               max_tokens: int) -> list[dict[str, Any]]:
    split = urllib.parse.urlsplit(url)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    pool = HttpPool(f"{split.scheme}://{split.netloc}", name="gateway", headers=headers)
    path = split.path.rstrip("/") + "/v1/chat/completions"
    body = orjson.dumps({"model": model, "stream": stream, "max_tokens": max_tokens,
                         "messages": [{"role": "user", "content": PROMPTS[0]}]})
    try:
        results = []
        for c in levels:
            level = await run_level(pool, path, body, concurrency=c, duration=duration, stream=stream,
                                    label=f"c={c:<4}")
            results.append(level.summary())
        return results
    finally:
        await pool.aclose()


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency {text!r}: give positive integers, comma-separated (1,4,16)")
    return levels


def _load(args: argparse.Namespace) -> int:
    try:
        levels = _levels(args.concurrency)
        results = asyncio.run(load(args.url, args.model, levels, duration=args.duration, stream=args.stream,
                                   key=os.environ.get(args.key_env) or None, max_tokens=args.max_tokens))
    except (ValueError, OSError) as exc:
        print(f"labgate load: {exc}", file=sys.stderr)
        return 1
    best = knee(results)
    if args.json:
        print(orjson.dumps({"levels": results, "knee": best}).decode())
        return 0
    print(f"{'concurrency':>11} {'req/s':>9} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for lv in results:
        mark = "  <- knee" if lv["concurrency"] == best else ""
        cells = "".join(f"{'-' if lv[k] is None else lv[k]:>10}" for k in ("p50_ms", "p95_ms", "p99_ms"))
        print(f"{lv['concurrency']:>11} {lv['req_per_s']:>9}{cells} {lv['errors']:>7}{mark}")
    if best is not None:
        print(f"knee: concurrency {best} reaches {KNEE_SHARE:.0%} of the best throughput; more only adds latency")
    return 0


def compare(url: str, models: list[str], *, requests: int, key: str | None, max_tokens: int) -> list[dict[str, Any]]:
    rows = []
    progress = Progress("compare", len(models) * requests)
    done = 0
    for model in models:
        runs = []
        for i in range(requests):
            body = {"model": model, "stream": True, "max_tokens": max_tokens,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
            runs.append(measure(url, body, key=key, timeout=REQUEST_TIMEOUT_S))
            done += 1
            progress.show(done, model)
        ok = [r for r in runs if r["status"] < 300]

        def median(key: str, rows: list[dict[str, Any]] = ok) -> float | None:
            values = sorted(r[key] for r in rows if r[key] is not None)
            return values[len(values) // 2] if values else None

        rows.append({"model": model, "requests": len(runs), "ok": len(ok), "p50_total_ms": median("total_ms"),
                     "p50_first_token_ms": median("first_token_ms"), "p50_tokens_per_s": median("tokens_per_s"),
                     "deployments": sorted({str(r["deployment"]) for r in ok}),
                     "errors": sorted({str(r.get("error")) for r in runs if r["status"] >= 300})})
    progress.end()
    return rows


def _compare(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        rows = compare(args.url, models, requests=args.requests, key=os.environ.get(args.key_env) or None,
                       max_tokens=args.max_tokens)
    except (ValueError, OSError) as exc:
        print(f"labgate compare-providers: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    print(f"{'model':32} {'ok':>6} {'total ms':>10} {'1st token ms':>13} {'tokens/s':>9}  served by")
    for r in rows:
        cells = [f"{'-' if r[k] is None else r[k]:>{w}}" for k, w in
                 (("p50_total_ms", 10), ("p50_first_token_ms", 13), ("p50_tokens_per_s", 9))]
        print(f"{shown(r['model'])[:32]:32} {r['ok']:>3}/{r['requests']:<2} {' '.join(cells)}  "
              f"{shown(', '.join(r['deployments']))}")
        for error in r["errors"]:
            print(f"{'':32} error: {shown(error)}")
    return 0
