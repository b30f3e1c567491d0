"""``gateway.yaml``: the server, auth, CORS, routing limits, logging, the history store and metrics."""

from __future__ import annotations

import re
from importlib.util import find_spec
from typing import Literal

from pydantic import Field, field_validator, model_validator

from labgate.config.schema.base import Strict
from labgate.config.schema.cache import CacheConfig, StateConfig
from labgate.config.schema.limits import BudgetsConfig, RateLimitsConfig
from labgate.config.schema.metrics import MetricsConfig
from labgate.config.schema.queue import QueueConfig
from labgate.config.schema.reload import ReloadConfig
from labgate.config.schema.store import StoreConfig
from labgate.config.schema.tracing import TracingConfig

_HOST = re.compile(r"\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+")
_ORIGIN = re.compile(r"\*|null|[A-Za-z][A-Za-z0-9+.-]*://(\*\.)?[A-Za-z0-9_.-]+(:\d{1,5})?"
                     r"|[A-Za-z][A-Za-z0-9+.-]*://\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(default=600.0, gt=0)  # total deadline across all attempts
    keepalive_timeout_s: float = Field(default=75.0, gt=0)  # idle between requests; also the write timeout
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # on SIGTERM: unready (and queued requests answered 503) this long before new connections are refused,
    # so a load balancer polling /health/readiness stops sending first (docs/reliability.md)
    drain_delay_s: float = Field(default=0.0, ge=0, le=300)
    # client-facing HTTP limits (server/limits.py): what a slow or hostile client can hold
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)  # request line + headers (+ trailers): 431
    request_read_timeout_s: float = Field(default=60.0, gt=0)  # whole head and body from the first byte: 408
    max_connections: int = Field(default=4096, ge=1)  # open client connections; more get 503 and are closed
    max_connections_per_ip: int = Field(default=512, ge=1)  # the same, per client address
    # Host names (any port) this gateway answers for, against DNS rebinding (server/origin.py).
    # None: loopback names, IP literals and the listen host; any host at all when a master key is set.
    # "*" allows any host; "*.example.com" a domain's subdomains.
    allowed_hosts: list[str] | None = None

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str] | None) -> list[str] | None:
        for host in hosts or ():
            if not _HOST.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name: give a name or IP address without scheme, port "
                                 "or path ('gateway.example.com', '10.0.0.5', '[::1]'), '*.example.com' or '*'")
        return hosts


class CorsConfig(Strict):
    """Which browser origins may call the gateway (server/origin.py); none but its own by default."""

    allow_origins: list[str] = Field(default_factory=list)  # "https://app.example.com", or "*"
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "OPTIONS"])
    allow_headers: list[str] = Field(default_factory=lambda: ["*"])  # "*": those the preflight asks for
    expose_headers: list[str] = Field(default_factory=lambda: [
        "x-request-id", "x-client-request-id", "request-id", "x-labgate-provider", "x-labgate-deployment",
        "x-labgate-attempts", "retry-after", "x-should-retry", "x-labgate-cost", "x-labgate-routing",
        "x-labgate-budget"])
    allow_credentials: bool = False
    max_age_s: int = Field(default=600, ge=0, le=86400)  # how long a browser may cache a preflight

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: give scheme://host[:port] without a path "
                                 "('https://app.example.com', 'http://localhost:3000'), "
                                 "'https://*.example.com', 'null' or '*'")
        return origins


class AuthConfig(Strict):
    master_key_env: str | None = None
    # virtual keys (docs/keys.md): kept hashed in the history database; once any exists, every API call needs
    # the master key or a valid virtual key. false: only the master key, and the key table is never read.
    virtual_keys: bool = True
    keys_refresh_s: float = Field(default=0.5, gt=0, le=60)  # how soon a revoked key is refused everywhere


class CircuitConfig(Strict):
    failure_threshold: int = Field(default=3, ge=1)  # consecutive failures that open it
    cooldown_s: float = Field(default=30.0, gt=0)


class StreamTimeoutsConfig(Strict):
    # a stream with no token this long after its attempt began goes to the next candidate (reliability.md)
    ttft_timeout_s: float | None = Field(default=None, gt=0)
    # a stream silent this long between chunks ends with an error event (or is rescued)
    stream_idle_timeout_s: float | None = Field(default=None, gt=0)


class ResilienceConfig(StreamTimeoutsConfig):
    max_attempts: int = Field(default=4, ge=1)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    stream_rescue: bool = False  # continue a stream that broke mid-answer on another deployment (reliability.md)
    routes: dict[str, StreamTimeoutsConfig] = Field(default_factory=dict)  # requested model → its own timeouts


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    requests: bool = True  # one JSON line per request
    client_ip: bool = True
    # a request that takes at least this long is also logged at warning with its breakdown; null: never
    slow_request_ms: float | None = Field(default=30_000.0, gt=0)


class GatewayConfig(Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)  # browser origins allowed (none by default)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)  # GET /metrics (Prometheus)
    tracing: TracingConfig = Field(default_factory=TracingConfig)  # OpenTelemetry traces (OTLP/HTTP)
    config: ReloadConfig = Field(default_factory=ReloadConfig)  # hot reload, watching, backups
    state: StateConfig = Field(default_factory=StateConfig)  # shared state backend (Redis) or in-process
    cache: CacheConfig | None = None  # the response cache; absent: off (docs/cache.md)
    queue: QueueConfig = Field(default_factory=QueueConfig)  # waiting for capacity (docs/reliability.md)
    rate_limits: RateLimitsConfig | None = None  # gateway-wide and per-model rpm/tpm (docs/limits.md)
    budgets: BudgetsConfig | None = None  # spend limits per period (docs/limits.md)

    @model_validator(mode="after")
    def _cache_backend_has_url(self) -> GatewayConfig:
        cache = self.cache
        if cache is None or not cache.enabled:
            return self
        url = cache.url or self.state.url
        if cache.backend == "redis" and not url:
            raise ValueError("cache.backend is redis but no Redis URL is set: add cache.url or state.url")
        if (cache.backend or ("redis" if url else "memory")) == "redis" and find_spec("redis") is None:
            raise ValueError("the cache's Redis backend needs the redis client: pip install 'labgate[redis]'")
        return self
