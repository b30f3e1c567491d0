"""Provider types: the one table from a ``type:`` value to its config model and adapter.

A new wire protocol is one folder under ``providers/`` plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from labgate.config.schema.providers import ProviderConfig
from labgate.providers.anthropic.adapter import AnthropicAdapter
from labgate.providers.anthropic.config import AnthropicConfig
from labgate.providers.base import Adapter
from labgate.providers.local_embeddings.adapter import LocalEmbeddingsAdapter
from labgate.providers.local_embeddings.config import LocalEmbeddingsConfig
from labgate.providers.openai_compat.adapter import OpenAICompatibleAdapter
from labgate.providers.openai_compat.config import OpenAICompatibleConfig


@dataclass(frozen=True, slots=True)
class AdapterType:
    config: type[ProviderConfig]
    build: Callable[[Any, str], Adapter]


def _openai_compatible(config: OpenAICompatibleConfig, name: str) -> Adapter:
    return OpenAICompatibleAdapter(config, name=name)


def _anthropic(config: AnthropicConfig, name: str) -> Adapter:
    return AnthropicAdapter(config, name=name)


def _local_embeddings(config: LocalEmbeddingsConfig, name: str) -> Adapter:
    return LocalEmbeddingsAdapter(config, name=name)


_OPENAI = AdapterType(OpenAICompatibleConfig, _openai_compatible)

TYPES = MappingProxyType({
    "openai": _OPENAI,
    "openai_compatible": _OPENAI,
    "vllm": _OPENAI,
    "llama_cpp": _OPENAI,
    "ollama": _OPENAI,
    "lmstudio": _OPENAI,
    "anthropic": AdapterType(AnthropicConfig, _anthropic),
    "local_embeddings": AdapterType(LocalEmbeddingsConfig, _local_embeddings),
})
