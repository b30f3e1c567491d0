"""Config for the ``anthropic`` provider type (Anthropic's Messages API)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labgate.config.schema.providers import ProviderConfig

DEFAULT_BASE_URL = "https://api.anthropic.com"


class AnthropicConfig(ProviderConfig):
    """An Anthropic Messages upstream; the key in ``api_key_env`` is sent as ``x-api-key``."""

    type: Literal["anthropic"]
    base_url: str | None = DEFAULT_BASE_URL  # paths are /v1/messages and /v1/models under it
    anthropic_version: str = "2023-06-01"
    # Anthropic requires max_tokens and OpenAI does not: used when the client sends none.
    default_max_tokens: int = Field(default=4096, ge=1)
