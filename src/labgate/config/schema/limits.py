"""``gateway.yaml`` → ``rate_limits:`` and ``budgets:`` (docs/limits.md).

Per-key limits live on the keys themselves (``labgate keys create --rpm``);
per-provider ones in ``providers.yaml`` (``rate_limits:``, ``budget:``).
Absent sections cost the request path nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from labgate.config.schema.base import Strict

Period = Literal["day", "week", "month", "total"]


class RateLimit(Strict):
    rpm: int | None = Field(default=None, ge=1)  # requests per minute
    tpm: int | None = Field(default=None, ge=1)  # tokens (prompt + completion) per minute


class RateLimitsConfig(Strict):
    """Gateway-wide and per-model request and token rates."""

    rpm: int | None = Field(default=None, ge=1)  # the whole gateway (every replica together on Redis)
    tpm: int | None = Field(default=None, ge=1)
    models: dict[str, RateLimit] = Field(default_factory=dict)  # model name or glob (as requested) → limits
    # tokens reserved for the answer when a request gives no max_tokens (settled with the real count after)
    default_output_tokens: int = Field(default=1024, ge=0)
    # what happens while the Redis backend is unreachable: open (serve, unlimited) or closed (429)
    on_backend_error: Literal["open", "closed"] = "open"
    url: str | None = None  # a Redis URL for limits and budgets alone (default: state.url; neither: in-process)
    namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")  # Redis keys: labgate:{limits:NS}:…


class Budget(Strict):
    """One budget: ``scope`` global, project or model (``name`` is the project or the model as requested)."""

    scope: Literal["global", "project", "model"]
    name: str | None = None
    limit_usd: float = Field(gt=0)
    period: Period = "month"

    @model_validator(mode="after")
    def _named(self) -> Budget:
        if (self.scope == "global") != (self.name is None):
            raise ValueError("give 'name' for a project or model budget, and none for scope: global")
        return self


class BudgetsConfig(Strict):
    limits: list[Budget] = Field(default_factory=list)
    # reject: 429 insufficient_quota; fallback: the request goes to fallback_model instead
    on_exhausted: Literal["reject", "fallback"] = "reject"
    fallback_model: str | None = None
    # fractions of a budget whose passing is logged, counted and (with alert_webhook) POSTed, once each
    alert_thresholds: tuple[float, ...] = (0.5, 0.8, 1.0)
    alert_webhook: str | None = Field(default=None, pattern=r"^https?://")

    @field_validator("alert_thresholds")
    @classmethod
    def _fractions(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < v <= 1 for v in values) or len(values) > 20:
            raise ValueError("give at most 20 fractions, each above 0 and at most 1 (0.8 = 80%)")
        return values

    @model_validator(mode="after")
    def _fallback(self) -> BudgetsConfig:
        seen = set()
        for b in self.limits:
            if (b.scope, b.name) in seen:
                raise ValueError(f"two budgets for scope {b.scope}" + (f", name {b.name!r}" if b.name else ""))
            seen.add((b.scope, b.name))
        if self.on_exhausted == "fallback" and not self.fallback_model:
            raise ValueError("on_exhausted: fallback needs fallback_model (a local model)")
        return self
