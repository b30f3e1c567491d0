"""``labgate export litellm``: a labgate config → one LiteLLM proxy ``config.yaml``.

For teams that run both during a migration. Every routable model of an
active provider becomes a ``model_list`` deployment (keys as
``os.environ/NAME``); exact matches and load-balanced groups become
deployments under their public name; fallback chains, aliases, retries and
the master key go to ``router_settings`` / ``general_settings``. What LiteLLM
cannot express (capability routes, per-model strategies) is reported.

A value written as ``${VAR}`` is exported as ``os.environ/VAR``, never as the
value it has here: the export goes into files and tickets, secrets must not.
LiteLLM reads only whole values from the environment, so a reference inside a
longer value (``http://${HOST}:8000/v1``) is written as it stands, with a note.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from labgate.config.load import Config
from labgate.config.migrate.litellm import ENV_PREFIX, EXPORT_PREFIX, STRATEGY_OUT, Note
from labgate.config.schema.providers import ModelConfig, ProviderConfig
from labgate.config.variables import keep_references

_WHOLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Exporter:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.providers = {n: p for n, p in config.providers.items() if p.status == "active"}
        self.model_list: list[dict[str, Any]] = []
        self.names: set[str] = set()
        self.notes: list[Note] = []
        for name, provider in config.providers.items():
            if provider.status != "active":
                self.notes.append(Note(f"providers.{name}", "inactive: not exported", "info"))

    def deployment(self, public: str, provider: str, model: str, *, weight: float | None = None,
                   order: int | None = None) -> None:
        config = self.providers[provider]
        prefix = EXPORT_PREFIX[config.type]
        params: dict[str, Any] = {"model": f"{prefix}/{model}"}
        base = config.base_url
        if base and config.type == "ollama":
            base = base.removesuffix("/").removesuffix("/v1")  # LiteLLM talks to Ollama's native API
        if base and not (config.type == "openai" and "api.openai.com" in base) \
                and not (config.type == "anthropic" and "api.anthropic.com" in base):
            params["api_base"] = base
        if config.api_key_env:
            params["api_key"] = ENV_PREFIX + config.api_key_env
        elif config.type in ("openai_compatible", "vllm", "llama_cpp", "lmstudio"):
            params["api_key"] = "none"  # LiteLLM's OpenAI client insists on some key
        if config.timeout_s != ProviderConfig.model_fields["timeout_s"].default:
            params["timeout"] = config.timeout_s
        if config.max_parallel_requests:
            params["max_parallel_requests"] = config.max_parallel_requests
        if config.rate_limits:
            params.update({k: v for k, v in config.rate_limits.model_dump().items() if v is not None})
        if weight is not None:
            params["weight"] = weight
        if order is not None:
            params["order"] = order
        entry: dict[str, Any] = {"model_name": public, "litellm_params": params}
        info = self._info(config, model)
        if info:
            entry["model_info"] = info
        self.model_list.append(entry)
        self.names.add(public)

    @staticmethod
    def _info(config: ProviderConfig, model: str) -> dict[str, Any]:
        found: ModelConfig | None = next((m for m in config.models if model in (m.name, m.alias)), None)
        info: dict[str, Any] = {}
        if found is None:
            return info
        if found.context_length:
            info["max_input_tokens"] = found.context_length
        pricing = found.pricing or config.pricing
        if pricing:
            info["input_cost_per_token"] = pricing.input_per_1m / 1e6
            info["output_cost_per_token"] = pricing.output_per_1m / 1e6
        if "embeddings" in found.tags or "embeddings" in found.capabilities:
            info["mode"] = "embedding"
        return info

    def models(self) -> None:
        routing = self.config.mappings.routing
        for pname, provider in self.providers.items():
            for model in provider.models:
                for public in filter(None, (model.name, model.alias)):
                    if public not in routing.exact_matches and public not in routing.load_balancing:
                        self.deployment(public, pname, model.name)
        for name, exact in routing.exact_matches.items():
            if exact.provider in self.providers:
                self.deployment(name, exact.provider, exact.model or name)
        strategies = set()
        for name, group in routing.load_balancing.items():
            strategies.add(group.strategy)
            for i, dep in enumerate(group.deployments):
                if dep.provider in self.providers:
                    self.deployment(name, dep.provider, dep.model or name,
                                    weight=dep.weight if group.strategy == "weighted" else None,
                                    order=i + 1 if group.strategy == "priority" else None)
        for i, pattern in enumerate(routing.patterns):
            if pattern.provider in self.providers:
                self.deployment(pattern.pattern, pattern.provider, pattern.pattern)
                self.notes.append(Note(f"routing.patterns[{i}]", f"glob {pattern.pattern!r} exported as a "
                                       "LiteLLM wildcard deployment; check that it matches the same names",
                                       "approximate"))
        for capability in routing.capabilities:
            self.notes.append(Note(f"routing.capabilities.{capability}", "LiteLLM has no capability routes; "
                                   "not exported"))
        if len(strategies) > 1:
            self.notes.append(Note("routing.load_balancing", f"strategies {sorted(strategies)} are per model in "
                                   "labgate and router-wide in LiteLLM; exported as one", "approximate"))
        self.strategy = STRATEGY_OUT.get(next(iter(strategies)), "simple-shuffle") if strategies else None

    def target(self, entry: str, requested: str, path: str) -> str | None:
        """A fallback entry as a LiteLLM model group name (adding a deployment for provider/model pairs)."""
        if entry in self.names:
            return entry
        head, sep, tail = entry.partition("/")
        provider, model = (head, tail) if sep and head in self.config.providers else (None, None)
        if provider is None and entry in self.config.providers:
            provider, model = entry, requested
        if provider is not None and model and provider in self.providers:
            name = f"{provider}/{model}"
            if name not in self.names:
                self.deployment(name, provider, model)
            return name
        self.notes.append(Note(path, f"{entry!r} has no LiteLLM model group; dropped from the chain"))
        return None

    def router(self) -> dict[str, Any]:
        mappings = self.config.mappings
        routing = mappings.routing
        chains: dict[str, tuple[str, ...]] = {}
        for name, exact in routing.exact_matches.items():
            chains[name] = exact.fallback_chain
        for name, group in routing.load_balancing.items():
            chains[name] = group.fallback_chain
        for name, chain in mappings.fallbacks.items():
            if not chains.get(name):  # a chain of its own wins, as in the route table
                chains[name] = chain
        router: dict[str, Any] = {}
        if self.strategy:
            router["routing_strategy"] = self.strategy
        fallbacks = []
        for name, chain in chains.items():
            if not chain:
                continue
            targets = [t for i, e in enumerate(chain)
                       if (t := self.target(e, name, f"fallbacks.{name}[{i}]")) is not None]
            if not targets:
                continue
            if name == "*":
                router["default_fallbacks"] = targets
            elif any(c in name for c in "*?["):
                self.notes.append(Note(f"fallbacks.{name}", "LiteLLM fallbacks name one model group, not a "
                                       "glob; not exported"))
            else:
                fallbacks.append({name: targets})
        if fallbacks:
            router["fallbacks"] = fallbacks
        if routing.aliases:
            router["model_group_alias"] = dict(routing.aliases)
        resilience = self.config.gateway.resilience
        router["num_retries"] = max(resilience.max_attempts - 1, 0)
        router["allowed_fails"] = resilience.circuit.failure_threshold
        router["cooldown_time"] = resilience.circuit.cooldown_s
        router["timeout"] = self.config.gateway.server.request_timeout_s
        return router


def export_litellm(config: Config, *, written: Mapping[str, Any] | None = None
                   ) -> tuple[dict[str, Any], list[Note]]:
    """A LiteLLM proxy config equivalent to ``config`` (as a YAML-ready dict), and what did not carry over.

    ``written``: the files' data read with ``${VAR}`` references kept (``load.read_raw`` with
    ``variables.References``); every value that came from one is exported as a reference.
    """
    if written is not None:
        config = _as_written(config, written)
    exporter = _Exporter(config)
    exporter.models()
    router = exporter.router()
    doc: dict[str, Any] = {"model_list": exporter.model_list, "router_settings": router}
    key_env = config.gateway.auth.master_key_env
    if key_env:
        doc["general_settings"] = {"master_key": ENV_PREFIX + key_env}
    return _references(doc, exporter.notes, ""), exporter.notes


def _as_written(config: Config, written: Mapping[str, Any]) -> Config:
    providers = (written.get("providers") or {}).get("providers") or {}
    return dataclasses.replace(
        config,
        providers={n: keep_references(p, providers.get(n)) for n, p in config.providers.items()},
        mappings=keep_references(config.mappings, written.get("mappings")),
        gateway=keep_references(config.gateway, written.get("gateway")))


def _references(value: Any, notes: list[Note], path: str) -> Any:
    """``${VAR}`` → ``os.environ/VAR``; a reference inside a longer value stays as written, with a note."""
    if isinstance(value, str) and "${" in value:
        whole = _WHOLE.fullmatch(value)
        if whole:
            return ENV_PREFIX + whole.group(1)
        notes.append(Note(path, f"{value!r} uses an environment variable inside a longer value (or with a "
                          "default); LiteLLM reads only whole values as os.environ/NAME: written as it stands, "
                          "put the whole value in one variable", "approximate"))
        return value
    if isinstance(value, dict):
        return {k: _references(v, notes, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_references(v, notes, f"{path}[{i}]") for i, v in enumerate(value)]
    return value
