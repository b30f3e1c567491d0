"""Cost: usage blocks with cached, cache-write and reasoning tokens, priced by hand; genai-prices agrees."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from labgate.config.schema.providers import PricingConfig, ProviderConfig
from labgate.cost import FREE, Prices, Rates, from_config, from_genai_prices, rates_for
from labgate.providers.anthropic.translate import read_usage
from labgate.providers.base import StreamInfo, Usage
from labgate.providers.openai_compat.adapter import OpenAICompatibleAdapter, _usage

OPENAI_USAGE = {"prompt_tokens": 2000, "completion_tokens": 700,
                "prompt_tokens_details": {"cached_tokens": 1500},
                "completion_tokens_details": {"reasoning_tokens": 400}}
ANTHROPIC_USAGE = {"input_tokens": 100, "cache_read_input_tokens": 3000, "cache_creation_input_tokens": 500,
                   "output_tokens": 250}


def test_openai_usage_details_are_read() -> None:
    assert _usage(OPENAI_USAGE) == Usage(2000, 700, cached_tokens=1500, reasoning_tokens=400)
    # junk in the details reads as zero, never as an error
    assert _usage({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": "x"},
                   "completion_tokens_details": [1]}) == Usage(5, 0)


def test_openai_stream_usage_chunk_is_read() -> None:
    info = StreamInfo()
    event = b"data: " + orjson.dumps({"choices": [], "usage": OPENAI_USAGE}) + b"\n\n"
    OpenAICompatibleAdapter._tap([event], info, strip_usage=False)
    assert info.usage == Usage(2000, 700, cached_tokens=1500, reasoning_tokens=400)


def test_anthropic_usage_counts_cache_reads_and_writes() -> None:
    assert read_usage(ANTHROPIC_USAGE) == Usage(3600, 250, cached_tokens=3000, cache_write_tokens=500)


def test_hand_computed_openai_cost_with_cached_and_reasoning_tokens() -> None:
    # gpt-4o-like: $2.50 input, $1.25 cached input, $10 output per 1M
    rates = from_config(PricingConfig(input_per_1m=2.5, output_per_1m=10, cached_input_per_1m=1.25))
    usage = _usage(OPENAI_USAGE)
    assert usage is not None
    # 500 uncached × 2.5 + 1500 cached × 1.25 + 700 output (400 of them reasoning) × 10, per 1M
    assert rates.cost(usage) == pytest.approx((500 * 2.5 + 1500 * 1.25 + 700 * 10) / 1e6)
    # a separate reasoning rate applies to the reasoning part only
    reasoning = from_config(PricingConfig(input_per_1m=2.5, output_per_1m=10, cached_input_per_1m=1.25,
                                          reasoning_per_1m=20))
    assert reasoning.cost(usage) == pytest.approx((500 * 2.5 + 1500 * 1.25 + 300 * 10 + 400 * 20) / 1e6)


def test_hand_computed_anthropic_cost_with_cache_reads_and_writes() -> None:
    # claude-sonnet-like: $3 input, $0.30 cache read, $3.75 cache write, $15 output per 1M
    rates = from_config(PricingConfig(input_per_1m=3, output_per_1m=15, cached_input_per_1m=0.3,
                                      cache_write_per_1m=3.75))
    assert rates.cost(read_usage(ANTHROPIC_USAGE)) == pytest.approx(
        (100 * 3 + 3000 * 0.3 + 500 * 3.75 + 250 * 15) / 1e6)


def test_unset_cache_rates_fall_back_to_the_input_rate_and_per_hour_pricing() -> None:
    rates = from_config(PricingConfig(input_per_1m=1, output_per_1m=2))
    assert rates.cost(Usage(10, 5, cached_tokens=4, cache_write_tokens=3)) == pytest.approx((10 + 10) / 1e6)
    hourly = from_config(PricingConfig(per_hour=3.6))
    assert hourly.cost(Usage(1000, 1000), seconds=10) == pytest.approx(0.01)
    assert FREE.cost(Usage(1000, 1000)) == 0


def provider(**fields: Any) -> ProviderConfig:
    return ProviderConfig.model_validate(fields)


@pytest.mark.parametrize(("kind", "model", "usage"), [
    ("openai", "gpt-4o", _usage(OPENAI_USAGE)),
    ("openai", "o3-mini", _usage(OPENAI_USAGE)),
    ("anthropic", "claude-sonnet-4-5", read_usage(ANTHROPIC_USAGE)),
    ("anthropic", "claude-sonnet-4-5", Usage(250_000, 1000, cached_tokens=10_000)),  # past the 200k tier
])
def test_genai_prices_fast_path_agrees_with_genai_prices(kind: str, model: str, usage: Usage) -> None:
    genai_prices = pytest.importorskip("genai_prices")
    rates = from_genai_prices(provider(type=kind), model)
    assert rates is not None and rates.source == "genai-prices"
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=usage.prompt_tokens, cache_read_tokens=usage.cached_tokens,
                           cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.completion_tokens),
        model, provider_id=kind)
    assert rates.cost(usage) == pytest.approx(float(expected.total_price))


def test_where_a_price_comes_from() -> None:
    cloud = provider(type="openai", models=[{"name": "gpt-4o", "pricing": {"input_per_1m": 1, "output_per_1m": 1}},
                                            "gpt-4o-mini"])
    assert rates_for(cloud, "gpt-4o") == Rates(1e-6, 1e-6)  # the model's own price wins
    assert rates_for(cloud, "gpt-4o-mini").source == "genai-prices"  # type: ignore[union-attr]
    assert rates_for(provider(type="ollama"), "llama3") is FREE  # local engines are free unless priced
    assert rates_for(provider(type="ollama", pricing={"per_hour": 1.0}), "llama3").per_hour == 1.0  # type: ignore[union-attr]
    assert rates_for(provider(type="openai_compatible", base_url="http://10.0.0.1/v1"), "x") is None
    prices = Prices({"cloud": cloud})
    assert prices.rates("cloud", "gpt-4o") == Rates(1e-6, 1e-6)
    assert prices.rates("cloud", "unlisted-model-zz") is None
    assert prices.rates("nobody", "gpt-4o") is None


def test_a_record_costs_what_its_rates_say_whatever_its_usage() -> None:
    """Prices.price prices plain input/output usage inline (no call per request): for every kind of usage
    and rates, tiered or with cache and reasoning rates, it must be exactly Rates.cost's figure."""
    import os
    import random

    from labgate.record import RequestRecord

    rng = random.Random(int(os.environ.get("LABGATE_FUZZ_SEED", "0")))
    plain = Rates(1e-6, 3e-6)
    special = Rates(2e-6, 5e-6, cache_read=1e-7, cache_write=4e-6, reasoning=9e-6)
    tiered = Rates(1e-6, 2e-6, tier_start=1000, tier=Rates(3e-6, 4e-6))
    for _ in range(500):
        rates = rng.choice((plain, special, tiered))
        prices = Prices({})
        prices._rates["p/m"] = rates
        record = RequestRecord("r", "chat")
        record.deployment, record.provider, record.attempts = "p/m", "p", 1
        prompt = rng.choice((0, rng.randrange(1, 3000), -rng.randrange(1, 10)))
        extra = rng.choice((0, 0, rng.randrange(1, 50)))
        record.usage = Usage(prompt, rng.randrange(0, 900), **{rng.choice(
            ("cached_tokens", "cache_write_tokens", "reasoning_tokens")): extra})
        assert prices.price(record) == rates.cost(record.usage)
