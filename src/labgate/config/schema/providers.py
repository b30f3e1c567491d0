"""``providers.yaml``: the upstreams labgate can send requests to.

Only what every provider type shares lives here; each adapter folder
subclasses :class:`ProviderConfig` with its own options and ``type`` values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

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
    rate_limits: RateLimitsConfig | None = None
    budget: BudgetConfig | None = None
    pricing: PricingConfig | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _names_to_models(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value
