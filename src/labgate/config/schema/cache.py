"""``gateway.yaml`` → ``state:`` and ``cache:``; ``model-mappings.yaml`` → ``routing.cache``.

``state.url`` names the shared state backend (Redis) that features keeping
state across requests use; unset means in-process state. ``cache:`` turns on
the response cache (absent: no cache, and the request path pays one ``is
None`` check). Per model (or glob) options in ``routing.cache`` override the
global ones for that route.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from labgate.config.schema.base import Strict

CacheEndpoint = Literal["chat", "completions", "embeddings", "messages"]
ALL_CACHE_ENDPOINTS: tuple[CacheEndpoint, ...] = ("chat", "completions", "embeddings", "messages")
# a namespace is one key segment: no ':' (the separator) and no glob characters (SCAN patterns)
NAMESPACE_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"


class StateConfig(Strict):
    """Where state shared across requests (and replicas) lives."""

    url: str | None = None  # redis://host:port/db (rediss:// for TLS); unset: in-process
    timeout_s: float = Field(default=0.25, gt=0)  # per Redis command and connect; past it: unavailable
    retry_s: float = Field(default=2.0, gt=0)  # after a failure, Redis is left alone this long (fail open)
    max_connections: int = Field(default=64, ge=1)  # Redis connections per process; all busy: wait ≤ timeout_s
    # replicas on one Redis (docs/scaling.md): those with the same cluster name share circuit state and
    # config reloads, each polling Redis every sync_interval_s (fixed at start)
    cluster: str = Field(default="default", pattern=NAMESPACE_PATTERN)
    sync_interval_s: float = Field(default=0.5, gt=0, le=10)
    share_circuits: bool = True  # a circuit that opens on one replica opens on all
    share_config: bool = True  # an admin API reload on one replica reloads every replica


class CacheConfig(Strict):
    """The response cache (docs/cache.md)."""

    enabled: bool = True
    # memory: in-process LRU (the embedded default); redis: shared (url below, else state.url).
    # Unset: redis when a url is known, memory otherwise.
    backend: Literal["memory", "redis"] | None = None
    url: str | None = None  # a Redis URL for the cache alone (overrides state.url)
    namespace: str = Field(default="default", pattern=NAMESPACE_PATTERN)  # keys: labgate:{namespace}:{hash}
    ttl_s: float = Field(default=3600.0, gt=0)
    endpoints: tuple[CacheEndpoint, ...] = ALL_CACHE_ENDPOINTS
    # skip: a chat/completions/messages request is cached only when its temperature is 0;
    # cache: every request is (the answer cached first is replayed to every later identical request)
    nondeterministic: Literal["skip", "cache"] = "skip"
    max_entries: int = Field(default=10_000, ge=1)  # memory backend: LRU bound on entries
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)  # memory backend: LRU bound on stored bytes
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, ge=256)  # a bigger answer is not stored
    # true: each API key has its own entries (a hit never reveals that another key sent the same prompt)
    per_key: bool = False
    single_flight: bool = True  # identical concurrent misses make one upstream call
    single_flight_wait_s: float = Field(default=30.0, gt=0)  # a waiter goes upstream itself after this

    @model_validator(mode="after")
    def _url_needs_redis(self) -> CacheConfig:
        if self.backend == "memory" and self.url is not None:
            raise ValueError("cache.url is only used by backend: redis")
        return self


class RouteCacheConfig(Strict):
    """``routing.cache.<model or glob>``: the cache options of one route; unset keys take the global ones."""

    enabled: bool = True
    namespace: str | None = Field(default=None, pattern=NAMESPACE_PATTERN)
    ttl_s: float | None = Field(default=None, gt=0)
    endpoints: tuple[CacheEndpoint, ...] | None = None
    nondeterministic: Literal["skip", "cache"] | None = None
