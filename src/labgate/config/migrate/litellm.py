"""What LiteLLM's proxy ``config.yaml`` and labgate's files have in common, both ways.

LiteLLM names a deployment's upstream as ``<provider prefix>/<model>`` in
``litellm_params.model`` and reads secrets as ``os.environ/NAME``. This table
says which prefixes become which labgate provider types (and back); the
conversions are in :mod:`~labgate.config.migrate.from_litellm` and
:mod:`~labgate.config.migrate.to_litellm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ENV_PREFIX = "os.environ/"


@dataclass(frozen=True, slots=True)
class Prefix:
    """A LiteLLM provider prefix that labgate can serve."""

    type: str  # labgate provider type
    base_url: str | None = None  # where the service lives when api_base is not given
    key_env: str | None = None  # the variable LiteLLM reads when api_key is not given


# LiteLLM provider prefix → labgate provider type. OpenAI-compatible clouds keep their URL.
PREFIXES: dict[str, Prefix] = {
    "openai": Prefix("openai", key_env="OPENAI_API_KEY"),
    "text-completion-openai": Prefix("openai", key_env="OPENAI_API_KEY"),
    "anthropic": Prefix("anthropic", key_env="ANTHROPIC_API_KEY"),
    "ollama": Prefix("ollama", base_url="http://localhost:11434"),
    "ollama_chat": Prefix("ollama", base_url="http://localhost:11434"),
    "hosted_vllm": Prefix("vllm"),
    "vllm": Prefix("vllm"),
    "lm_studio": Prefix("lmstudio", base_url="http://localhost:1234/v1"),
    "llamafile": Prefix("llama_cpp", base_url="http://localhost:8080/v1"),
    "groq": Prefix("openai_compatible", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "together_ai": Prefix("openai_compatible", "https://api.together.xyz/v1", "TOGETHERAI_API_KEY"),
    "openrouter": Prefix("openai_compatible", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "deepseek": Prefix("openai_compatible", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "mistral": Prefix("openai_compatible", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "fireworks_ai": Prefix("openai_compatible", "https://api.fireworks.ai/inference/v1", "FIREWORKS_AI_API_KEY"),
    "deepinfra": Prefix("openai_compatible", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
    "perplexity": Prefix("openai_compatible", "https://api.perplexity.ai", "PERPLEXITYAI_API_KEY"),
    "xai": Prefix("openai_compatible", "https://api.x.ai/v1", "XAI_API_KEY"),
}

# labgate provider type → the LiteLLM prefix that reaches the same engine.
EXPORT_PREFIX = {"openai": "openai", "openai_compatible": "openai", "vllm": "hosted_vllm",
                 "llama_cpp": "openai", "ollama": "ollama_chat", "lmstudio": "lm_studio",
                 "anthropic": "anthropic"}

# Load-balancing strategies, both ways (LiteLLM's are router-wide, labgate's per model).
STRATEGY_IN = {"simple-shuffle": "weighted", "least-busy": "least_busy"}
STRATEGY_OUT = {"weighted": "simple-shuffle", "round_robin": "simple-shuffle", "priority": "simple-shuffle",
                "least_busy": "least-busy"}


@dataclass(frozen=True, slots=True)
class Note:
    """One thing a conversion could not carry over exactly, and where it was."""

    path: str  # key path in the source file
    message: str
    level: Literal["unmapped", "approximate", "info"] = "unmapped"

    def __str__(self) -> str:
        return f"{self.level}: `{self.path}`: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "path": self.path, "message": self.message}


def env_name(value: Any) -> str | None:
    """``os.environ/NAME`` → ``NAME``; anything else → None."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        return value[len(ENV_PREFIX):].strip() or None
    return None


def split_model(model: str) -> tuple[str | None, str]:
    """``ollama_chat/llama3.1:8b`` → (``ollama_chat``, ``llama3.1:8b``); an unprefixed name → (None, name)."""
    head, sep, tail = model.partition("/")
    if sep and head in PREFIXES:
        return head, tail
    if sep and head and "." not in head and head.replace("_", "").replace("-", "").isalnum() \
            and head.islower() and head not in {"meta-llama", "qwen", "mistralai", "google"}:
        return head, tail  # an unknown provider prefix, reported by the caller
    return None, model


def infer_prefix(model: str) -> str | None:
    """The provider LiteLLM infers for an unprefixed model name."""
    lowered = model.lower()
    if lowered.startswith(("gpt-", "o1", "o3", "o4", "chatgpt", "text-embedding", "davinci", "babbage")):
        return "openai"
    if lowered.startswith("claude"):
        return "anthropic"
    return None
