"""``labgate import litellm``: a LiteLLM proxy ``config.yaml`` → labgate's config files.

``model_list`` deployments become providers (one per engine: type, base URL
and key variable) with their models; a ``model_name`` that differs from the
upstream name becomes an exact match, several deployments under one name a
load-balanced group. ``router_settings`` / ``litellm_settings`` fallbacks
become fallback chains, ``model_group_alias`` aliases, retries and cooldowns
the resilience settings, ``general_settings.master_key`` the auth key
variable. Secrets are never copied: a literal key is reported and replaced
by a variable name. Everything that has no labgate equivalent is reported as
a :class:`~labgate.config.migrate.litellm.Note`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from labgate.config.migrate.litellm import PREFIXES, STRATEGY_IN, Note, env_name, infer_prefix, split_model

_KNOWN_PARAMS = {"model", "api_base", "base_url", "api_key", "rpm", "tpm", "timeout", "stream_timeout",
                 "max_parallel_requests", "weight", "order", "input_cost_per_token", "output_cost_per_token"}
_IGNORED_SETTINGS = {"set_verbose", "json_logs", "drop_params", "telemetry"}
_NOT_NEEDED = {"drop_params": "not needed: labgate drops or renames what each engine rejects (quirks)",
               "json_logs": "not needed: labgate logs JSON lines"}


@dataclass
class Imported:
    """labgate's files (as YAML-ready dicts, keyed by file name) and what did not carry over."""

    files: dict[str, dict[str, Any]]
    notes: list[Note] = field(default_factory=list)


@dataclass
class _Deployment:
    public: str
    provider: str
    model: str
    weight: float | None
    order: int | None


class _Importer:
    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.notes: list[Note] = []
        self.providers: dict[str, dict[str, Any]] = {}
        self._by_identity: dict[tuple[str, str | None, str | None], str] = {}
        self.deployments: list[_Deployment] = []
        self.routing: dict[str, Any] = {}
        self.fallbacks: dict[str, list[str]] = {}
        self.gateway: dict[str, Any] = {}

    def note(self, path: str, message: str, level: str = "unmapped") -> None:
        self.notes.append(Note(path, message, level))  # type: ignore[arg-type]

    # -- model_list ---------------------------------------------------------------

    def models(self) -> None:
        model_list = self.doc.get("model_list") or []
        if not isinstance(model_list, list):
            self.note("model_list", "must be a list of deployments; nothing imported")
            return
        for i, entry in enumerate(model_list):
            path = f"model_list[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("litellm_params"), dict):
                self.note(path, "no `litellm_params`; skipped")
                continue
            self.deployment(path, entry)

    def deployment(self, path: str, entry: Mapping[str, Any]) -> None:
        params: Mapping[str, Any] = entry["litellm_params"]
        public = str(entry.get("model_name") or "")
        target = params.get("model")
        if not public or not isinstance(target, str):
            self.note(path, "needs `model_name` and `litellm_params.model`; skipped")
            return
        prefix, upstream = split_model(target)
        prefix = prefix or infer_prefix(upstream)
        if prefix not in PREFIXES:
            which = f"provider prefix {prefix!r}" if prefix else "a provider labgate cannot infer"
            self.note(f"{path}.litellm_params.model", f"{target!r} uses {which}, which labgate has no "
                      "adapter for (an OpenAI-compatible endpoint works with `openai/` and `api_base`); skipped")
            return
        provider = self.provider(path, prefix, params)
        if "*" in upstream or "*" in public:
            self.routing.setdefault("patterns", []).append({"pattern": public, "provider": provider})
            if upstream != "*" and upstream != public.split("/", 1)[-1]:
                self.note(path, f"wildcard {public!r} → {target!r}: labgate sends the requested name "
                          "as it is", "approximate")
            return
        self.model_entry(path, provider, upstream, entry)
        weight = params.get("weight")
        order = params.get("order")
        self.deployments.append(_Deployment(public, provider, upstream,
                                            float(weight) if isinstance(weight, (int, float)) else None,
                                            order if isinstance(order, int) else None))
        for key in sorted(set(params) - _KNOWN_PARAMS):
            self.note(f"{path}.litellm_params.{key}", "no labgate equivalent; not imported")

    def provider(self, path: str, prefix: str, params: Mapping[str, Any]) -> str:
        """The provider for this deployment's engine (same type, URL and key variable: same provider)."""
        known = PREFIXES[prefix]
        kind = known.type
        base = params.get("api_base") or params.get("base_url")
        base_url = (_env_ref(base) if env_name(base) else str(base)) if base else known.base_url
        if kind == "openai" and base_url and "api.openai.com" not in base_url:
            kind = "openai_compatible"  # `openai/` + api_base: any OpenAI-compatible server
        if kind in ("vllm", "openai_compatible") and not base_url:
            self.note(f"{path}.litellm_params", f"{prefix}/ without `api_base`: set `base_url` by hand")
        key_env = self.key_env(path, prefix, params.get("api_key"))
        identity = (kind, base_url, key_env)
        name = self._by_identity.get(identity)
        if name is None:
            name = self._new_name(prefix, kind, base_url)
            self._by_identity[identity] = name
            body: dict[str, Any] = {"type": kind}
            if base_url and not (kind == "anthropic" and "api.anthropic.com" in base_url):
                body["base_url"] = base_url
            if key_env:
                body["api_key_env"] = key_env
            body["models"] = []
            self.providers[name] = body
        body = self.providers[name]
        for src, dst in (("timeout", "timeout_s"), ("max_parallel_requests", "max_parallel_requests")):
            value = params.get(src)
            if isinstance(value, (int, float)) and value > 0:
                if dst in body and body[dst] != value:
                    self.note(f"{path}.litellm_params.{src}", f"provider {name!r} already has {dst}: "
                              f"{body[dst]}; labgate sets it per provider, not per deployment", "approximate")
                else:
                    body[dst] = int(value) if dst == "max_parallel_requests" else value
        limits = {k: int(params[k]) for k in ("rpm", "tpm") if isinstance(params.get(k), (int, float))}
        if limits:
            if "rate_limits" in body and body["rate_limits"] != limits:
                self.note(f"{path}.litellm_params", f"rpm/tpm are per deployment in LiteLLM and per provider in "
                          f"labgate; {name!r} keeps {body['rate_limits']}", "approximate")
            else:
                body["rate_limits"] = limits
        return name

    def key_env(self, path: str, prefix: str, api_key: Any) -> str | None:
        if api_key is None:
            return PREFIXES[prefix].key_env
        name = env_name(api_key)
        if name:
            return name
        if isinstance(api_key, str) and api_key.strip() and api_key.lower() not in {"none", "sk-none", "dummy",
                                                                                    "ollama", "empty", "na"}:
            variable = PREFIXES[prefix].key_env or f"{prefix.upper()}_API_KEY"
            self.note(f"{path}.litellm_params.api_key", f"a literal API key is not copied (labgate reads "
                      f"secrets from the environment only): export it as ${variable}")
            return variable
        return None  # a placeholder key for a local engine that ignores it

    def _new_name(self, prefix: str, kind: str, base_url: str | None) -> str:
        base = {"openai_compatible": prefix if prefix != "openai" else "openai_compatible"}.get(kind, kind)
        if base not in self.providers:
            return base
        port = urlsplit(base_url).port if base_url and "${" not in base_url else None
        host = urlsplit(base_url).hostname if base_url and "${" not in base_url else None
        taken = {urlsplit(p.get("base_url") or "").port for n, p in self.providers.items()
                 if n == base or n.startswith(base + "_")}
        by_port = str(port) if port and port not in taken else None  # a port says which engine, if it differs
        # a provider name is ASCII letters, digits, `_`, `-`, `.`, at most 64 (load.PROVIDER_NAME)
        for suffix in (by_port, re.sub(r"[^A-Za-z0-9]+", "_", host or "").strip("_")[:40] or None):
            if suffix and f"{base}_{suffix}" not in self.providers:
                return f"{base}_{suffix}"
        n = 2
        while f"{base}_{n}" in self.providers:
            n += 1
        return f"{base}_{n}"

    def model_entry(self, path: str, provider: str, upstream: str, entry: Mapping[str, Any]) -> None:
        models: list[dict[str, Any]] = self.providers[provider]["models"]
        model = next((m for m in models if m["name"] == upstream), None)
        if model is None:
            model = {"name": upstream}
            models.append(model)
        found = entry.get("model_info")
        info: dict[str, Any] = found if isinstance(found, dict) else {}
        params = entry["litellm_params"]
        context = info.get("max_input_tokens") or info.get("max_tokens")
        if isinstance(context, int) and context > 0:
            model["context_length"] = context
        mode = info.get("mode")
        if mode == "embedding":
            model["tags"] = ["embeddings"]
        capabilities = [c for c, flag in (("tools", "supports_function_calling"), ("vision", "supports_vision"))
                        if info.get(flag) is True]
        if capabilities:
            model["capabilities"] = capabilities
        cost_in = params.get("input_cost_per_token", info.get("input_cost_per_token"))
        cost_out = params.get("output_cost_per_token", info.get("output_cost_per_token"))
        if isinstance(cost_in, (int, float)) and isinstance(cost_out, (int, float)):
            model["pricing"] = {"input_per_1m": round(cost_in * 1e6, 6), "output_per_1m": round(cost_out * 1e6, 6)}
        for key in sorted(set(info) - {"id", "mode", "max_input_tokens", "max_tokens", "max_output_tokens",
                                       "supports_function_calling", "supports_vision", "input_cost_per_token",
                                       "output_cost_per_token", "base_model", "description"}):
            self.note(f"{path}.model_info.{key}", "no labgate equivalent; not imported")

    # -- routing -----------------------------------------------------------------

    def groups(self, strategy: str | None) -> None:
        by_name: dict[str, list[_Deployment]] = {}
        for dep in self.deployments:
            by_name.setdefault(dep.public, []).append(dep)
        exact: dict[str, Any] = {}
        balanced: dict[str, Any] = {}
        for public, deps in by_name.items():
            unique = list({(d.provider, d.model): d for d in deps}.values())
            if len(unique) == 1:
                dep = unique[0]
                if dep.model != public:
                    exact[public] = {"provider": dep.provider, "model": dep.model}
                continue
            ordered = any(d.order is not None for d in unique)
            if ordered:
                unique.sort(key=lambda d: (d.order is None, d.order or 0))
            kind = "priority" if ordered else STRATEGY_IN.get(strategy or "simple-shuffle", "round_robin")
            if kind == "weighted" and not any(d.weight is not None for d in unique):
                kind = "round_robin"  # an unweighted shuffle spreads like a rotation
            group: dict[str, Any] = {"strategy": kind, "deployments": []}
            for d in unique:
                item: dict[str, Any] = {"provider": d.provider}
                if d.model != public:
                    item["model"] = d.model
                if kind == "weighted" and d.weight is not None:
                    item["weight"] = d.weight
                group["deployments"].append(item)
            balanced[public] = group
        if exact:
            self.routing["exact_matches"] = exact
        if balanced:
            self.routing["load_balancing"] = balanced

    def router(self) -> None:
        router = self.doc.get("router_settings") or {}
        settings = self.doc.get("litellm_settings") or {}
        strategy = router.get("routing_strategy")
        if strategy and strategy not in STRATEGY_IN:
            self.note("router_settings.routing_strategy", f"{strategy!r} has no labgate equivalent; "
                      "load-balanced groups rotate (round_robin) instead", "approximate")
        self.groups(strategy)
        for section, source in (("litellm_settings", settings), ("router_settings", router)):
            self.fallback_lists(section, source)
            aliases = source.get("model_group_alias")
            for alias, target in (aliases.items() if isinstance(aliases, dict) else ()):
                group = target.get("model") if isinstance(target, dict) else target
                if isinstance(group, str):
                    self.routing.setdefault("aliases", {})[str(alias)] = group
        resilience: dict[str, Any] = {}
        retries = router.get("num_retries", settings.get("num_retries"))
        if isinstance(retries, int) and retries >= 0:
            resilience["max_attempts"] = retries + 1
            self.note("router_settings.num_retries", f"{retries} retries → max_attempts: {retries + 1} "
                      "(labgate counts attempts across the whole fallback chain)", "approximate")
        circuit = {}
        if isinstance(router.get("allowed_fails"), int) and router["allowed_fails"] >= 1:
            circuit["failure_threshold"] = router["allowed_fails"]
        if isinstance(router.get("cooldown_time"), (int, float)) and router["cooldown_time"] > 0:
            circuit["cooldown_s"] = router["cooldown_time"]
        if circuit:
            resilience["circuit"] = circuit
        if resilience:
            self.gateway["resilience"] = resilience
        timeout = router.get("timeout", settings.get("request_timeout"))
        if isinstance(timeout, (int, float)) and timeout > 0:
            self.gateway.setdefault("server", {})["request_timeout_s"] = timeout
        for key in sorted(set(router) - {"routing_strategy", "fallbacks", "default_fallbacks", "model_group_alias",
                                         "num_retries", "allowed_fails", "cooldown_time", "timeout",
                                         "context_window_fallbacks", "content_policy_fallbacks"}):
            self.note(f"router_settings.{key}", "no labgate equivalent; not imported")

    def fallback_lists(self, section: str, source: Mapping[str, Any]) -> None:
        for i, item in enumerate(source.get("fallbacks") or []):
            for model, chain in (item.items() if isinstance(item, dict) else ()):
                if isinstance(chain, list):
                    self.fallbacks[str(model)] = [str(c) for c in chain]
                else:
                    self.note(f"{section}.fallbacks[{i}]", "expected {model: [fallbacks…]}; skipped")
        default = source.get("default_fallbacks")
        if isinstance(default, list) and default:
            self.fallbacks["*"] = [str(c) for c in default]
        for kind in ("context_window_fallbacks", "content_policy_fallbacks"):
            if source.get(kind):
                self.note(f"{section}.{kind}", "labgate has one kind of fallback (on any failure); "
                          "these chains are not imported — add them to `fallbacks` if wanted")

    # -- the rest ---------------------------------------------------------------

    def settings(self) -> None:
        settings = self.doc.get("litellm_settings") or {}
        if settings.get("cache"):
            params = settings.get("cache_params") or {}
            where = f"{params.get('type', 'redis')}"
            if params.get("host"):
                where += f" at {params.get('host')}:{params.get('port', 6379)}"
            ttl = f", ttl {params['ttl']} s" if params.get("ttl") else ""
            self.note("litellm_settings.cache", f"response cache ({where}{ttl}): labgate has no response "
                      "cache in this version; not imported — requests go to the engines every time")
        for key in sorted(set(settings) - {"cache", "cache_params", "fallbacks", "default_fallbacks",
                                           "context_window_fallbacks", "content_policy_fallbacks",
                                           "num_retries", "request_timeout", "model_group_alias"}):
            if key in _IGNORED_SETTINGS:
                self.note(f"litellm_settings.{key}", _NOT_NEEDED.get(key, "not needed in labgate"), "info")
            else:
                self.note(f"litellm_settings.{key}", "no labgate equivalent; not imported")
        general = self.doc.get("general_settings") or {}
        key = general.get("master_key")
        if key is not None:
            variable = env_name(key)
            if variable is None:
                variable = "LABGATE_MASTER_KEY"
                self.note("general_settings.master_key", "a literal master key is not copied: "
                          f"export it as ${variable}")
            self.gateway["auth"] = {"master_key_env": variable}
        for key in sorted(set(general) - {"master_key"}):
            self.note(f"general_settings.{key}", "no labgate equivalent; not imported")
        if self.doc.get("environment_variables"):
            self.note("environment_variables", "not copied (they may hold secrets): export them in the "
                      "gateway's environment")
        for key in sorted(set(self.doc) - {"model_list", "router_settings", "litellm_settings",
                                           "general_settings", "environment_variables"}):
            self.note(key, "unknown LiteLLM section; not imported")


    def prune(self) -> None:
        """Drop fallback and alias entries that name a deployment which was not imported."""
        known = {d.public for d in self.deployments} | {d.model for d in self.deployments}
        known |= set(self.routing.get("aliases", {}))
        patterns = [p["pattern"] for p in self.routing.get("patterns", [])]

        def routable(name: str) -> bool:
            return name in known or any(fnmatch.fnmatchcase(name, p) for p in patterns)

        for model, chain in list(self.fallbacks.items()):
            kept = [c for c in chain if routable(c)]
            for dropped in (c for c in chain if not routable(c)):
                self.note(f"fallbacks.{model}", f"fallback {dropped!r} names no imported deployment; dropped")
            if model != "*" and not routable(model):
                self.note(f"fallbacks.{model}", f"{model!r} names no imported deployment; chain dropped")
                kept = []
            if kept:
                self.fallbacks[model] = kept
            else:
                del self.fallbacks[model]
        aliases = self.routing.get("aliases", {})
        for alias, target in list(aliases.items()):
            if target not in known and not routable(target):
                self.note(f"router_settings.model_group_alias.{alias}", f"{target!r} names no imported "
                          "deployment; dropped")
                del aliases[alias]
        if "aliases" in self.routing and not aliases:
            del self.routing["aliases"]


def import_litellm(doc: Mapping[str, Any]) -> Imported:
    """Convert a parsed LiteLLM proxy config into labgate's files, noting what did not carry over."""
    importer = _Importer(doc)
    importer.models()
    importer.router()
    importer.settings()
    importer.prune()
    files: dict[str, dict[str, Any]] = {"providers.yaml": {"providers": importer.providers}}
    mappings: dict[str, Any] = {}
    if importer.routing:
        mappings["routing"] = importer.routing
    if importer.fallbacks:
        mappings["fallbacks"] = importer.fallbacks
    if mappings:
        files["model-mappings.yaml"] = mappings
    if importer.gateway:
        files["gateway.yaml"] = importer.gateway
    return Imported(files, importer.notes)


def _env_ref(value: str) -> str:
    return "${" + (env_name(value) or "") + "}"
