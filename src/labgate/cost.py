"""Cost of a request in USD, from the config's prices or the genai-prices database (docs/cost.md).

Where a deployment's price comes from, first found wins:

1. ``pricing:`` on the model entry in ``providers.yaml``, then on the provider
   (per million tokens: input, output, cached input, cache write, reasoning;
   or ``per_hour`` for a machine you pay by the hour);
2. local engines (ollama, llama_cpp, vllm, lmstudio, local_embeddings): free;
3. `genai-prices <https://github.com/pydantic/genai-prices>`_ (Pydantic's
   maintained price database, the snapshot packaged with the installed
   version: no network at run time) by the provider type (openai, anthropic)
   or, for any other OpenAI-compatible service, its base URL;
4. otherwise unknown: the record's cost stays empty.

A price is resolved once per deployment (genai-prices' own lookup costs
~0.1 ms) into per-token rates; a request then costs a few multiplications.
Tiered prices follow genai-prices' cliff rule: past a tier's start (counted
in prompt tokens) every token pays the tier's rate.

Token classes: cached input tokens (OpenAI ``prompt_tokens_details.cached_tokens``,
Anthropic ``cache_read_input_tokens``) pay the cache-read rate; Anthropic's
``cache_creation_input_tokens`` the cache-write rate; the rest of the prompt
the input rate. Reasoning tokens are part of the completion and pay the output
rate (both OpenAI and Anthropic bill them as output) unless ``reasoning_per_1m`` is set.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from labgate.config.schema.providers import LOCAL_TYPES
from labgate.providers.base import Usage

if TYPE_CHECKING:
    from labgate.config.load import Config
    from labgate.config.schema.providers import PricingConfig, ProviderConfig
    from labgate.record import RequestRecord

log = logging.getLogger("labgate.cost")
GENAI_PROVIDERS = {"openai": "openai", "anthropic": "anthropic"}  # our provider type → genai-prices provider id
MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per token for each token class (``None``: the input/output rate applies)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None
    per_hour: float | None = None  # a machine paid by the hour: cost = time spent × rate
    tier_start: int | None = None  # prompt tokens past which ``tier`` applies to every token
    tier: Rates | None = None
    source: str = "config"  # config | local | genai-prices

    def cost(self, usage: Usage | None, seconds: float | None = None) -> float:
        if self.per_hour is not None:
            return self.per_hour * (seconds or 0.0) / 3600
        if usage is None:
            return 0.0
        rates = self.tier if self.tier is not None and self.tier_start is not None \
            and usage.prompt_tokens > self.tier_start else self
        cached, written = usage.cached_tokens, usage.cache_write_tokens
        plain_in = usage.prompt_tokens - cached - written
        if plain_in < 0:  # (not max(): no call on the request path)
            plain_in = 0
        total = plain_in * rates.input + usage.completion_tokens * rates.output
        if cached:
            total += cached * (rates.cache_read if rates.cache_read is not None else rates.input)
        if written:
            total += written * (rates.cache_write if rates.cache_write is not None else rates.input)
        if usage.reasoning_tokens and rates.reasoning is not None:
            total += usage.reasoning_tokens * (rates.reasoning - rates.output)
        return total


FREE = Rates(0.0, 0.0, source="local")


def from_config(p: PricingConfig) -> Rates:
    def per_token(v: float | None) -> float | None:
        return None if v is None else v / MILLION
    return Rates(p.input_per_1m / MILLION, p.output_per_1m / MILLION, per_token(p.cached_input_per_1m),
                 per_token(p.cache_write_per_1m), per_token(p.reasoning_per_1m), p.per_hour)


def from_genai_prices(provider: ProviderConfig, model: str) -> Rates | None:
    """The packaged genai-prices snapshot's current price for a model, or None when it has none."""
    provider_id = GENAI_PROVIDERS.get(provider.type)
    url = None if provider_id else provider.base_url
    if provider_id is None and url is None:
        return None
    try:
        from genai_prices import data_snapshot
        from genai_prices.types import TieredPrices
    except ImportError:  # the optional extra is not installed
        _warn_missing()
        return None
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, url)
    except LookupError:
        return None
    prices = info.get_prices(datetime.now(UTC))

    def rate(name: str, tiered: bool) -> float | None:
        value = getattr(prices, name, None)
        if isinstance(value, TieredPrices):
            value = value.tiers[0].price if tiered and value.tiers else value.base
        return None if value is None else float(value) / MILLION

    starts = {t.tiers[0].start for t in prices.__dict__.values() if isinstance(t, TieredPrices) and t.tiers}
    base = Rates(rate("input_mtok", False) or 0.0, rate("output_mtok", False) or 0.0,
                 rate("cache_read_mtok", False), rate("cache_write_mtok", False), source="genai-prices")
    if not starts:
        return base
    tier = Rates(rate("input_mtok", True) or 0.0, rate("output_mtok", True) or 0.0,
                 rate("cache_read_mtok", True), rate("cache_write_mtok", True), source="genai-prices")
    return Rates(base.input, base.output, base.cache_read, base.cache_write, tier_start=min(starts), tier=tier,
                 source="genai-prices")


@functools.cache
def _warn_missing() -> None:
    log.warning("cost: genai-prices is not installed, so cloud models without pricing: in providers.yaml have "
                "no cost (pip install 'labgate[prices]')")


def rates_for(provider: ProviderConfig, model: str) -> Rates | None:
    found = next((m for m in provider.models if m.name == model), None)
    if found is not None and found.pricing is not None:
        return from_config(found.pricing)
    if provider.pricing is not None:
        return from_config(provider.pricing)
    if provider.type in LOCAL_TYPES:
        return FREE
    return from_genai_prices(provider, model)


class Prices:
    """Rates per deployment (``provider/model``), resolved at load; unknown deployments on first use."""

    def __init__(self, providers: Mapping[str, ProviderConfig]) -> None:
        self._providers = providers
        self._rates: dict[str, Rates | None] = {}
        for name, p in providers.items():
            if p.status == "active":
                for m in p.models:
                    self._rates[f"{name}/{m.name}"] = rates_for(p, m.name)

    @classmethod
    def from_config(cls, config: Config) -> Prices:
        return cls(config.providers)

    def rates(self, provider: str | None, model: str | None) -> Rates | None:
        if provider is None or model is None:
            return None
        key = f"{provider}/{model}"
        try:
            return self._rates[key]
        except KeyError:
            p = self._providers.get(provider)
            found = self._rates[key] = rates_for(p, model) if p is not None else None
            return found

    def of(self, deployment: str, provider: str, model: str) -> Rates | None:
        """:meth:`rates` by the deployment's key (``provider/model``), known at load: one dict lookup."""
        rates = self._rates
        return rates[deployment] if deployment in rates else self.rates(provider, model)

    def price(self, record: RequestRecord) -> float | None:
        """The request's cost: 0 for a cache hit or a request that reached no upstream; None when unpriced."""
        deployment = record.deployment
        if record.cache_hit or deployment is None:
            return 0.0 if record.cache_hit or record.attempts == 0 else None
        rates = self._rates[deployment] if deployment in self._rates else \
            self.rates(record.provider, deployment.partition("/")[2])
        if rates is None:
            return None
        if rates.per_hour is None:  # priced per token: no time spent to measure
            usage = record.usage
            if usage is not None and rates.tier is None and usage.prompt_tokens >= 0 and not (
                    usage.cached_tokens or usage.cache_write_tokens or usage.reasoning_tokens):
                # Rates.cost of plain input and output tokens, inline (the common case: no call per request)
                return usage.prompt_tokens * rates.input + usage.completion_tokens * rates.output
            return rates.cost(usage)
        return rates.cost(record.usage, None if record.finished is None else record.finished - record.started)

    def describe(self) -> dict[str, Any]:
        return {k: None if r is None else {"source": r.source, "input_per_1m": r.input * MILLION,
                                           "output_per_1m": r.output * MILLION}
                for k, r in self._rates.items()}
