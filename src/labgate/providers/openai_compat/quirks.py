"""What each OpenAI-compatible engine does differently, as typed data.

A new OpenAI-compatible engine is one entry in :data:`PRESETS`. A provider
can adjust its preset with a ``quirks:`` block in ``providers.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from labgate.providers.base import ALL_ENDPOINTS

_NO_RENAMES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Quirks:
    """How to adapt an OpenAI request body for one engine."""

    default_base_url: str | None = None
    rename: Mapping[str, str] = field(default_factory=lambda: _NO_RENAMES)  # param → engine's name
    drop: frozenset[str] = frozenset()  # params the engine rejects or misreads
    endpoints: frozenset[str] = ALL_ENDPOINTS
    api_key_required: bool = False
    # Ask the engine for a usage chunk on streams (stream_options.include_usage) so tokens
    # are known; the chunk is removed again when the client did not ask for it.
    stream_usage: bool = True
    # Fragments of 5xx error messages that really mean "this request is unservable here"
    # (the engine reports a client problem as a server error); such answers are not
    # retried and do not count against the deployment's health.
    rejects: tuple[str, ...] = ()
    touches: frozenset[str] = field(init=False)  # every key this table may change

    def __post_init__(self) -> None:
        object.__setattr__(self, "touches", frozenset(self.rename) | self.drop)

    def merged(self, *, rename: Mapping[str, str], drop: frozenset[str]) -> Quirks:
        return Quirks(
            default_base_url=self.default_base_url,
            rename=MappingProxyType({**self.rename, **rename}),
            drop=self.drop | drop,
            endpoints=self.endpoints,
            api_key_required=self.api_key_required,
            stream_usage=self.stream_usage,
            rejects=self.rejects,
        )


_MAX_TOKENS = MappingProxyType({"max_completion_tokens": "max_tokens"})
# OpenAI-only parameters that local engines reject or silently misinterpret.
_OPENAI_ONLY = frozenset({"store", "service_tier", "prediction", "modalities", "audio",
                          "reasoning_effort", "web_search_options", "safety_identifier",
                          "prompt_cache_key", "verbosity"})

PRESETS: Mapping[str, Quirks] = MappingProxyType({
    "openai": Quirks(default_base_url="https://api.openai.com/v1", api_key_required=True),
    "openai_compatible": Quirks(),
    "vllm": Quirks(default_base_url="http://127.0.0.1:8001/v1",
                   drop=frozenset({"store", "service_tier", "prediction", "modalities", "audio",
                                   "web_search_options", "safety_identifier", "prompt_cache_key",
                                   "verbosity"})),
    # llama.cpp honours max_completion_tokens itself but ignores most OpenAI-only params;
    # it answers 500 for images on a text-only model and for inputs over its batch size.
    "llama_cpp": Quirks(default_base_url="http://127.0.0.1:8080/v1",
                        drop=_OPENAI_ONLY | {"parallel_tool_calls", "user", "metadata"},
                        rejects=("image input is not supported", "is too large to process")),
    "ollama": Quirks(default_base_url="http://127.0.0.1:11434/v1", rename=_MAX_TOKENS,
                     drop=_OPENAI_ONLY | {"parallel_tool_calls", "logit_bias", "metadata"}),
    "lmstudio": Quirks(default_base_url="http://127.0.0.1:1234/v1", rename=_MAX_TOKENS,
                       drop=_OPENAI_ONLY | {"parallel_tool_calls", "metadata"}),
})


def adapt_body(body: Mapping[str, object], *, model: str, quirks: Quirks) -> dict[str, object]:
    """A copy of ``body`` with ``model`` set and the engine's quirks applied."""
    out = dict(body)
    out["model"] = model
    if quirks.touches.isdisjoint(out):
        return out
    for key in quirks.drop & out.keys():
        del out[key]
    for src, dst in quirks.rename.items():
        if src in out:
            out[dst] = out.pop(src)  # the newer name wins, as in OpenAI's own API
    return out
