"""``gateway.yaml`` → ``rate_limits:`` and ``budgets:``: what is refused, with a message naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from labgate.config.schema.gateway import GatewayConfig


@pytest.mark.parametrize(("section", "fragment"), [
    ({"rate_limits": {"rpm": 0}}, "rpm"),
    ({"rate_limits": {"models": {"m": {"tpm": -1}}}}, "tpm"),
    ({"rate_limits": {"on_backend_error": "maybe"}}, "on_backend_error"),
    ({"rate_limits": {"namespace": "a:b"}}, "namespace"),
    ({"budgets": {"limits": [{"scope": "global", "limit_usd": 1}, {"scope": "global", "limit_usd": 2}]}},
     "two budgets"),
    ({"budgets": {"limits": [{"scope": "model", "limit_usd": 1}]}}, "give 'name'"),
    ({"budgets": {"limits": [{"scope": "global", "name": "x", "limit_usd": 1}]}}, "give 'name'"),
    ({"budgets": {"limits": [{"scope": "provider", "name": "openai", "limit_usd": 1}]}}, "scope"),
    ({"budgets": {"limits": [{"scope": "global", "limit_usd": 0}]}}, "limit_usd"),
    ({"budgets": {"limits": [{"scope": "global", "limit_usd": 1, "period": "year"}]}}, "period"),
    ({"budgets": {"on_exhausted": "fallback"}}, "fallback_model"),
    ({"budgets": {"alert_webhook": "ftp://x"}}, "alert_webhook"),
    ({"budgets": {"alert_thresholds": [0.5, 1.5]}}, "alert_thresholds"),
    ({"budgets": {"alert_thresholds": [0]}}, "alert_thresholds"),
    ({"auth": {"keys_refresh_s": 0}}, "keys_refresh_s"),
])
def test_bad_limits_are_refused(section: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        GatewayConfig.model_validate(section)


def test_defaults() -> None:
    config = GatewayConfig.model_validate({"rate_limits": {}, "budgets": {}})
    assert config.rate_limits is not None and config.budgets is not None
    assert (config.rate_limits.default_output_tokens, config.rate_limits.on_backend_error,
            config.rate_limits.namespace, config.budgets.on_exhausted) == (1024, "open", "default", "reject")
    assert (config.auth.virtual_keys, config.auth.keys_refresh_s) == (True, 0.5)
