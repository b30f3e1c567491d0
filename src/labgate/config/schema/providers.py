"""``providers.yaml``: the upstreams labgate can send requests to.

Only what every provider type shares lives here; each adapter folder
subclasses :class:`ProviderConfig` with its own options and ``type`` values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from labgate.config.schema.base import Strict

# provider types that are engines on our own machines: free unless priced (cost.py), "local" for local_first
LOCAL_TYPES = frozenset({"ollama", "llama_cpp", "vllm", "lmstudio", "local_embeddings"})


class PricingConfig(Strict):
    """USD per million tokens (docs/cost.md); or per hour, for a machine paid by the hour."""

    input_per_1m: float = Field(default=0.0, ge=0)
    output_per_1m: float = Field(default=0.0, ge=0)
    cached_input_per_1m: float | None = Field(default=None, ge=0)  # None: the input rate
    cache_write_per_1m: float | None = Field(default=None, ge=0)  # None: the input rate
    reasoning_per_1m: float | None = Field(default=None, ge=0)  # None: the output rate
    per_hour: float | None = Field(default=None, ge=0)  # set: cost = request time × this, tokens free


class RateLimitsConfig(Strict):
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class BudgetConfig(Strict):
    limit_usd: float = Field(gt=0)
    period: Literal["day", "week", "month", "total"] = "month"  # total: never resets (like budgets: in gateway.yaml)


class ModelConfig(Strict):
    """A model a provider serves. ``name`` is the upstream's name; ``alias`` a public one."""

    name: str = Field(min_length=1)
    alias: str | None = None
    context_length: int | None = Field(default=None, ge=1)
    tags: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    quantization: str | None = None
    pricing: PricingConfig | None = None


class EngineLoadConfig(Strict):
    """Read a local engine's own load in the background and route by it (docs/routing.md#engine-load)."""

    url: str | None = Field(default=None, pattern=r"^https?://")  # default: base_url's root + /metrics or /slots
    interval_s: float = Field(default=1.0, ge=0.05, le=300)  # one GET per interval per provider
    timeout_s: float = Field(default=0.5, gt=0, le=30)  # per poll; a slower engine counts as unknown load
    max_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)  # a bigger answer is ignored


class ProviderConfig(Strict):
    """Fields every provider type accepts; adapters extend this with their own."""

    type: str
    base_url: str | None = None
    api_key_env: str | None = None
    status: Literal["active", "inactive"] = "active"
    description: str | None = None
    models: tuple[ModelConfig, ...] = ()
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=60.0, gt=0)
    max_parallel_requests: int | None = Field(default=None, ge=1)  # in flight on this engine; more wait or spill
    max_queue: int | None = Field(default=None, ge=0)  # waiting for it; None: gateway.yaml queue.max_size
    # bytes of an answer's body (whole or streamed); more is a 502 (the same as providers.pool.DEFAULT_MAX_BODY)
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    priority: int = 100  # lower is tried first when several providers serve one model
    region: str | None = None  # RouteTable.mark_region takes a whole region out of routing and back
    failover_only: bool = False  # planned only when no other candidate of the route is healthy (docs/routing.md)
    # vllm (/metrics) and llama_cpp (/slots): poll the engine's own load; true or {url, interval_s, ...}
    engine_load: EngineLoadConfig | None = None
    rate_limits: RateLimitsConfig | None = None
    budget: BudgetConfig | None = None
    pricing: PricingConfig | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _names_to_models(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("engine_load", mode="before")
    @classmethod
    def _engine_load_flag(cls, value: object) -> object:
        return {} if value is True else None if value is False else value

    @model_validator(mode="after")
    def _engine_load_source(self) -> ProviderConfig:
        if self.engine_load is not None and self.engine_load.url is None and self.type not in ("vllm", "llama_cpp"):
            raise ValueError("engine_load reads vLLM's /metrics or llama.cpp's /slots: use type vllm or "
                             "llama_cpp, or give engine_load.url")
        return self

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value
