"""``model-mappings.yaml``: how a requested model name becomes deployments.

A *target* (routing entry, capability entry, fallback entry) is a string:
a model name (routed as usual), a ``provider/model`` pair, or — in a
fallback chain only — a provider name (the same model on that provider).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from labgate.config.schema.base import Strict
from labgate.config.schema.cache import RouteCacheConfig


class ExactMatchConfig(Strict):
    provider: str
    model: str | None = None  # the upstream's name; defaults to the requested name
    fallback_chain: tuple[str, ...] = ()


class PatternConfig(Strict):
    pattern: str = Field(min_length=1)  # a glob: ``llama3*``, ``*:7b``
    provider: str
    fallback_chain: tuple[str, ...] = ()


class DeploymentConfig(Strict):
    provider: str
    model: str | None = None
    weight: float = Field(default=1.0, gt=0)


class LoadBalancingConfig(Strict):
    # least_busy by default: it follows unequal engine speeds with no tuning (docs/routing.md);
    # local_first: local engines first, a cloud deployment only when every local one is failing or loaded
    # past prefer_local_under of its provider's max_parallel_requests (docs/limits.md)
    strategy: Literal["priority", "round_robin", "weighted", "least_busy", "local_first"] = "least_busy"
    deployments: tuple[DeploymentConfig, ...] = Field(min_length=1)
    fallback_chain: tuple[str, ...] = ()
    prefer_local_under: float = Field(default=0.9, gt=0, le=1)


class RoutingConfig(Strict):
    exact_matches: dict[str, ExactMatchConfig] = Field(default_factory=dict)
    patterns: tuple[PatternConfig, ...] = ()
    capabilities: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    load_balancing: dict[str, LoadBalancingConfig] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    cache: dict[str, RouteCacheConfig] = Field(default_factory=dict)  # model or glob → cache options
    # a provider with max_parallel_requests at or over this share of it is passed over for the route's
    # other candidates (cloud fallback) instead of queueing; None: only a full provider is (docs/routing.md)
    prefer_local_under: float | None = Field(default=None, gt=0, le=1)

    @field_validator("patterns", mode="before")
    @classmethod
    def _mapping_form(cls, value: object) -> object:
        # ``patterns: {"llama*": ollama}`` is accepted as a short form.
        if isinstance(value, dict):
            return [{"pattern": k, "provider": v} if isinstance(v, str) else {"pattern": k, **v}
                    for k, v in value.items()]
        return value


class MappingsConfig(Strict):
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    # default chains by model name or glob ("*" applies to every model without its own chain)
    fallbacks: dict[str, tuple[str, ...]] = Field(default_factory=dict)
