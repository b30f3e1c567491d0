"""An engine's own load, read in the background: vLLM's ``/metrics``, llama.cpp's ``/slots``.

A provider with ``engine_load`` (providers.yaml) gets an :class:`EngineLoad` that
polls its engine every ``interval_s`` (one GET, bounded by ``timeout_s`` and
``max_bytes``) and keeps three numbers: requests the engine is running, requests
it holds waiting, and its KV-cache usage (0..1), plus its slot count for llama.cpp.
These count every client of the engine, not only this gateway's requests, so
``least_busy`` and ``local_first`` see an engine that someone else keeps busy.

The request path only reads attributes (:meth:`EngineLoad.busy`); nothing waits
for a poll. The poller starts with the first read on a running loop and stops
with its Runtime. A poll that fails, times out, is too big or does not parse
leaves the load unknown (routing then uses the gateway's own in-flight count,
as without ``engine_load``); so does a reading older than three intervals.

Parsing is strict and bounded: the Prometheus text format line by line (only the
names below; values must be finite and ≥ 0, counts ≤ 1e6), ``/slots`` as a JSON
list of at most 4096 objects with a boolean ``is_processing``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from labgate.errors import LabgateError
from labgate.providers.http import HttpPool

if TYPE_CHECKING:
    from labgate.config.schema.providers import ProviderConfig

log = logging.getLogger("labgate.routing")

# metric name → what it is; vLLM (both KV names across versions) and llama.cpp's --metrics
RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing")
WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")
KV = ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", "llamacpp:kv_cache_usage_ratio")
MAX_COUNT = 1e6  # a request count above this is not believed
MAX_SLOTS = 4096
STALE_INTERVALS = 3  # a reading older than this many intervals is unknown load


class EngineLoad:
    """The last load read from one engine (None: unknown)."""

    __slots__ = ("_http", "_path", "_task", "errors", "interval", "kv", "last_error", "max_bytes", "name", "polls",
                 "read_at", "running", "slots", "timeout", "url", "waiting")

    def __init__(self, name: str, config: ProviderConfig) -> None:
        assert config.engine_load is not None
        options = config.engine_load
        url = options.url or _default_url(config)
        split = urlsplit(url)
        self.name = name
        self.url = url
        self.interval = options.interval_s
        self.timeout = options.timeout_s
        self.max_bytes = options.max_bytes
        self._path = (split.path or "/") + (f"?{split.query}" if split.query else "")
        headers = {}
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if key:  # llama-server started with --api-key guards /slots too
            headers["authorization"] = f"Bearer {key}"
        self._http = HttpPool(f"{split.scheme}://{split.netloc}", name=f"{name} engine load", headers=headers,
                              max_connections=1, max_response_bytes=options.max_bytes)
        self.running: int | None = None
        self.waiting: int | None = None
        self.kv: float | None = None  # KV-cache usage, 0..1
        self.slots: int | None = None  # llama.cpp: how many slots the engine has
        self.read_at = 0.0  # monotonic time of the last good reading
        self.polls = 0
        self.errors = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def busy(self) -> int | None:
        """Requests the engine is running or holds waiting, from a fresh reading; None when unknown."""
        if self._task is None:
            self._start()
        if self.running is None or time.monotonic() - self.read_at > STALE_INTERVALS * self.interval:
            return None
        return self.running + (self.waiting or 0)

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # read outside a loop (tests, tools): nothing to poll with
            return
        self._task = loop.create_task(self._poll(), name=f"engine load {self.name}")

    async def _poll(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)

    async def poll_once(self) -> bool:
        """One reading; True when it gave a load. Never raises (except cancellation)."""
        self.polls += 1
        try:
            status, _, body = await self._http.request("GET", self._path, timeout=self.timeout)
            if status != 200:
                raise ValueError(f"answered {status}")
            if self._path.rstrip("/").endswith("/slots"):
                (running, slots), waiting, kv = read_slots(body), None, None
            else:
                (running, waiting, kv), slots = read_metrics(body), None
        except (LabgateError, ValueError, orjson.JSONDecodeError) as exc:
            self.errors += 1
            error = exc.message if isinstance(exc, LabgateError) else str(exc)[:200]
            if error != self.last_error:
                log.info("engine load of %s unknown: %s", self.name, error)
            self.last_error, self.running, self.waiting, self.kv = error, None, None, None
            return False
        self.running, self.waiting, self.kv, self.slots = running, waiting, kv, slots
        self.read_at, self.last_error = time.monotonic(), None
        return True

    def status(self) -> dict[str, object]:
        fresh = self.running is not None and time.monotonic() - self.read_at <= STALE_INTERVALS * self.interval
        return {"url": self.url, "running": self.running, "waiting": self.waiting, "kv_cache_usage": self.kv,
                "slots": self.slots, "fresh": fresh, "polls": self.polls, "errors": self.errors,
                "last_error": self.last_error}

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._http.aclose()


def _default_url(config: ProviderConfig) -> str:
    base = (config.base_url or "").rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return base + ("/slots" if config.type == "llama_cpp" else "/metrics")


def read_metrics(text: bytes) -> tuple[int, int | None, float | None]:
    """(running, waiting, kv usage) from Prometheus text; ValueError when ``running`` is absent or a value
    is not believable. Several series of one name (one per model or engine) are summed; kv takes the max."""
    running: float | None = None
    waiting: float | None = None
    kv: float | None = None
    for raw in text.split(b"\n"):
        if not raw or raw[:1] == b"#":
            continue
        line = raw.decode("utf-8", "replace").strip()
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name not in RUNNING and name not in WAITING and name not in KV:
            continue
        parts = line.rsplit("}", 1)[-1].split() if "{" in line else line.split()[1:]
        if not parts:
            raise ValueError(f"{name} has no value")
        value = float(parts[0])  # ValueError on garbage
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} is {parts[0][:20]}")
        if name in KV:
            kv = max(kv or 0.0, min(value, 1.0))
        elif value > MAX_COUNT:
            raise ValueError(f"{name} is {value:g}")
        elif name in RUNNING:
            running = (running or 0.0) + value
        else:
            waiting = (waiting or 0.0) + value
    if running is None:
        raise ValueError("no running-requests metric in the answer")
    return int(running), None if waiting is None else int(waiting), kv


def read_slots(body: bytes) -> tuple[int, int]:
    """(slots processing, slots) from llama.cpp's ``/slots``; ValueError when it is not a list of slots."""
    slots: Any = orjson.loads(body)
    if not isinstance(slots, list) or not 0 < len(slots) <= MAX_SLOTS:
        raise ValueError("/slots is not a list of 1 to 4096 slots")
    busy = 0
    for slot in slots:
        processing = slot.get("is_processing") if isinstance(slot, dict) else None
        if not isinstance(processing, bool):
            raise ValueError("a slot without a boolean is_processing")
        busy += processing
    return busy, len(slots)


def load(engine: EngineLoad, inflight: int, limit: int | None) -> float:
    """A deployment's load for ``least_busy``: the larger of this gateway's in flight and the engine's
    running + waiting, as a share of ``limit`` (else the engine's slots; else a count), and at least its
    KV-cache usage (a full cache cannot take a new sequence)."""
    seen = engine.busy()
    if seen is None:
        return inflight / limit if limit else float(inflight)
    busy = max(inflight, seen)
    cap = limit or engine.slots
    if not cap:
        return busy + (engine.kv or 0.0)  # a count; the cache breaks ties
    return max(busy / cap, engine.kv or 0.0)


def busy(engine: EngineLoad | None, inflight: int) -> int:
    """In flight on the engine as far as known: this gateway's requests, or the engine's count if larger."""
    seen = None if engine is None else engine.busy()
    return inflight if seen is None or seen < inflight else seen
