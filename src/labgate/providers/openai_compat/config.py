"""Config for every OpenAI-compatible provider type (``openai``, ``vllm``, ``llama_cpp``, …)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labgate.config.schema.base import Strict
from labgate.config.schema.providers import ProviderConfig


class QuirksConfig(Strict):
    """Adjustments on top of the type's preset."""

    rename: dict[str, str] = Field(default_factory=dict)
    drop: tuple[str, ...] = ()


class OpenAICompatibleConfig(ProviderConfig):
    type: Literal["openai", "openai_compatible", "vllm", "llama_cpp", "ollama", "lmstudio"]
    quirks: QuirksConfig | None = None
