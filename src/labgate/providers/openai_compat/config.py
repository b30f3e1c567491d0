"""Config for every OpenAI-compatible provider type (``openai``, ``vllm``, ``llama_cpp``, …)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from labgate.config.schema.base import Strict
from labgate.config.schema.providers import ProviderConfig
from labgate.providers.openai_compat.quirks import PRESETS


class QuirksConfig(Strict):
    """Adjustments on top of the type's preset."""

    rename: dict[str, str] = Field(default_factory=dict)
    drop: tuple[str, ...] = ()


class OpenAICompatibleConfig(ProviderConfig):
    type: Literal["openai", "openai_compatible", "vllm", "llama_cpp", "ollama", "lmstudio"]
    quirks: QuirksConfig | None = None

    @model_validator(mode="after")
    def _base_url_known(self) -> OpenAICompatibleConfig:
        # Without this the config loads and the adapter refuses to start.
        if self.base_url is None and PRESETS[self.type].default_base_url is None:
            raise ValueError(f"`base_url` is required for type {self.type}")
        return self
