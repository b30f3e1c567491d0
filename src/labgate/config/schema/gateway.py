"""``gateway.yaml``: the server, auth, routing limits, logging, the history store and metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labgate.config.schema.base import Strict
from labgate.config.schema.metrics import MetricsConfig
from labgate.config.schema.reload import ReloadConfig
from labgate.config.schema.store import StoreConfig


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(default=600.0, gt=0)  # total deadline across all attempts
    keepalive_timeout_s: float = Field(default=75.0, gt=0)  # idle between requests; also the write timeout
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # client-facing HTTP limits (server/limits.py): what a slow or hostile client can hold
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)  # request line + headers (+ trailers): 431
    request_read_timeout_s: float = Field(default=60.0, gt=0)  # whole head and body from the first byte: 408
    max_connections: int = Field(default=4096, ge=1)  # open client connections; more get 503 and are closed
    max_connections_per_ip: int = Field(default=512, ge=1)  # the same, per client address


class AuthConfig(Strict):
    master_key_env: str | None = None


class CircuitConfig(Strict):
    failure_threshold: int = Field(default=3, ge=1)  # consecutive failures that open it
    cooldown_s: float = Field(default=30.0, gt=0)


class ResilienceConfig(Strict):
    max_attempts: int = Field(default=4, ge=1)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    requests: bool = True  # one JSON line per request
    client_ip: bool = True


class GatewayConfig(Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)  # GET /metrics (Prometheus)
    config: ReloadConfig = Field(default_factory=ReloadConfig)  # hot reload, watching, backups
