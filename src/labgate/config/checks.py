"""Cross-file checks: every name a file mentions must resolve somewhere else.

Run after each file validated on its own. Errors stop a config from
loading; warnings are reported and the config still loads.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from labgate.config.ports import static_conflicts
from labgate.config.problems import Problem, closest
from labgate.config.schema.experiments import ExperimentsConfig
from labgate.config.schema.mappings import MappingsConfig
from labgate.config.schema.providers import ProviderConfig

CAPABILITY_PREFIX = "capability:"


@dataclass(frozen=True, slots=True)
class Names:
    """What the config makes routable, by name."""

    providers: Mapping[str, ProviderConfig]
    served: Mapping[str, tuple[str, ...]]  # public model name → providers serving it (active or not)
    routed: frozenset[str]  # every name a request may use (besides provider/model pairs)
    patterns: tuple[str, ...]

    @classmethod
    def of(cls, providers: Mapping[str, ProviderConfig], mappings: MappingsConfig) -> Names:
        served: dict[str, list[str]] = {}
        for pname, provider in providers.items():
            for model in provider.models:
                for public in filter(None, (model.name, model.alias)):
                    owners = served.setdefault(public, [])
                    if pname not in owners:  # a name listed twice by one provider is one owner
                        owners.append(pname)
        routing = mappings.routing
        routed = (set(served) | set(routing.exact_matches) | set(routing.load_balancing)
                  | set(routing.aliases)
                  | {CAPABILITY_PREFIX + c for c in capabilities(providers, mappings)})
        return cls(providers, {k: tuple(v) for k, v in served.items()}, frozenset(routed),
                   tuple(p.pattern for p in routing.patterns))

    def is_model(self, name: str) -> bool:
        return name in self.routed or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def split_pair(self, entry: str) -> tuple[str, str] | None:
        """``provider/model`` → its parts, when the first part names a provider."""
        head, sep, tail = entry.partition("/")
        return (head, tail) if sep and tail and head in self.providers else None

    def suggest(self, name: str, *, providers: bool = True) -> str | None:
        pool = set(self.routed) | set(self.providers) if providers else set(self.routed)
        hint = closest(name, pool, n=1)
        return hint[0] if hint else None


def capabilities(providers: Mapping[str, ProviderConfig], mappings: MappingsConfig) -> set[str]:
    found = set(mappings.routing.capabilities)
    for provider in providers.values():
        for model in provider.models:
            found.update(model.capabilities)
    return found


def check_config(config: object, files: Mapping[str, str]) -> list[Problem]:
    """Every cross-file problem of a config that validated file by file."""
    providers: Mapping[str, ProviderConfig] = config.providers  # type: ignore[attr-defined]
    mappings: MappingsConfig = config.mappings  # type: ignore[attr-defined]
    names = Names.of(providers, mappings)
    pfile, mfile = files.get("providers", "providers.yaml"), files.get("mappings", "model-mappings.yaml")
    problems = list(_check_providers(providers, pfile))
    problems += _check_routing(names, mappings, mfile)
    problems += _check_cycles(names, mappings, mfile)
    problems += port_conflicts(config, files, severity="warning")
    experiments = getattr(config, "experiments", None)
    if experiments is not None and experiments.experiments:
        problems += _check_experiments(names, experiments, files.get("experiments", "experiments.yaml"))
    return problems


def _check_experiments(names: Names, config: ExperimentsConfig, file: str) -> Iterator[Problem]:
    """Every model an experiment applies to, and every variant's target, must resolve; overlaps are warned of."""
    covered: dict[str, str] = {}  # requested name → the first running experiment that takes it
    for i, experiment in enumerate(config.experiments):
        base = f"experiments[{i}]"
        for j, model in enumerate(experiment.model):
            if model != "*":
                yield from _target(names, model, file, f"{base}.model" + (f"[{j}]" if len(experiment.model) > 1
                                                                          else ""), provider_ok=False)
        for j, variant in enumerate(experiment.variants):
            if variant.model is not None:
                yield from _target(names, variant.model, file, f"{base}.variants[{j}].model", provider_ok=False)
        if experiment.status != "running":
            continue
        for model in experiment.covers:
            if model in covered:
                yield Problem(file, base, f"experiment {experiment.name!r} covers {model!r} like "
                              f"{covered[model]!r} before it: a request takes the first that matches",
                              severity="warning")
            covered.setdefault(model, experiment.name)


def port_conflicts(config: object, files: Mapping[str, str], *,
                   severity: Literal["error", "warning"] = "error") -> list[Problem]:
    """``ports.yaml`` against itself and ``gateway.yaml``: warnings at load, errors under ``--check-ports``."""
    ports = getattr(config, "ports", None)
    if ports is None or not ports.ports:
        return []
    server = config.gateway.server  # type: ignore[attr-defined]
    found = static_conflicts(ports.ports, server_host=server.host, server_port=server.port,
                             file=files.get("ports", "ports.yaml"))
    return [p if p.severity == "warning" else replace(p, severity=severity) for p in found]


def _check_providers(providers: Mapping[str, ProviderConfig], file: str) -> Iterator[Problem]:
    owners: dict[str, str] = {}
    for pname, provider in providers.items():
        seen: set[str] = set()
        for i, model in enumerate(provider.models):
            path = f"providers.{pname}.models[{i}]"
            if model.name in seen:
                yield Problem(file, path, f"model {model.name!r} is listed twice", severity="warning")
            seen.add(model.name)
            if model.alias and model.alias in owners and owners[model.alias] != pname:
                yield Problem(file, f"{path}.alias", f"alias {model.alias!r} is also a model of "
                              f"provider {owners[model.alias]!r}; requests go to both", severity="warning")
            owners.setdefault(model.name, pname)
        if provider.status == "active":
            yield from _check_key(pname, provider, file)


_KEYED_TYPES = frozenset({"openai", "anthropic"})


def _check_key(pname: str, provider: ProviderConfig, file: str) -> Iterator[Problem]:
    """A cloud provider without a usable key fails every request with 401: say so now."""
    path = f"providers.{pname}.api_key_env"
    if provider.api_key_env and not os.environ.get(provider.api_key_env):
        yield Problem(file, path, f"${provider.api_key_env} is not set: requests to {pname!r} go without "
                      "a key", severity="warning")
    elif not provider.api_key_env and provider.type in _KEYED_TYPES and not provider.base_url:
        yield Problem(file, path, f"{provider.type} needs an API key; set api_key_env", severity="warning")


def _target(names: Names, entry: str, file: str, path: str, *, provider_ok: bool) -> Iterator[Problem]:
    """One routing or fallback entry must resolve."""
    if names.is_model(entry):
        return
    pair = names.split_pair(entry)
    if pair is not None:
        yield from _provider_model(names, pair[0], pair[1], file, path)
        return
    if provider_ok and entry in names.providers:
        yield from _active(names, entry, file, path)
        return
    if entry in names.providers:  # only fallback chains may name a provider
        yield Problem(file, path, f"{entry!r} is a provider; name a model or a provider/model pair here")
        return
    kind = "model, provider/model pair or provider" if provider_ok else "model or provider/model pair"
    yield Problem(file, path, f"{entry!r} is not a known {kind}",
                  suggestion=names.suggest(entry, providers=provider_ok))


def _provider_model(names: Names, provider: str, model: str, file: str, path: str) -> Iterator[Problem]:
    if provider not in names.providers:
        hint = closest(provider, names.providers, n=1)
        yield Problem(file, path, f"provider {provider!r} does not exist in providers.yaml",
                      suggestion=hint[0] if hint else None)
        return
    yield from _active(names, provider, file, path)
    listed = [m.name for m in names.providers[provider].models]
    if listed and model not in listed and model not in {m.alias for m in names.providers[provider].models}:
        hint = closest(model, listed + [m.alias for m in names.providers[provider].models if m.alias], n=1)
        yield Problem(file, path, f"provider {provider!r} does not list model {model!r}",
                      severity="warning", suggestion=hint[0] if hint else None)


def _active(names: Names, provider: str, file: str, path: str) -> Iterator[Problem]:
    if names.providers[provider].status != "active":
        yield Problem(file, path, f"provider {provider!r} is inactive; this target is skipped",
                      severity="warning")


def _check_routing(names: Names, mappings: MappingsConfig, file: str) -> Iterator[Problem]:
    routing = mappings.routing
    for model, exact in routing.exact_matches.items():
        base = f"routing.exact_matches.{model}"
        yield from _provider_model(names, exact.provider, exact.model or model, file, f"{base}.provider")
        for i, entry in enumerate(exact.fallback_chain):
            yield from _target(names, entry, file, f"{base}.fallback_chain[{i}]", provider_ok=True)
    for i, pattern in enumerate(routing.patterns):
        base = f"routing.patterns[{i}]"
        if pattern.provider not in names.providers:
            hint = closest(pattern.provider, names.providers, n=1)
            yield Problem(file, f"{base}.provider", f"provider {pattern.provider!r} does not exist",
                          suggestion=hint[0] if hint else None)
        for j, entry in enumerate(pattern.fallback_chain):
            yield from _target(names, entry, file, f"{base}.fallback_chain[{j}]", provider_ok=True)
    for model, balanced in routing.load_balancing.items():
        base = f"routing.load_balancing.{model}"
        for i, dep in enumerate(balanced.deployments):
            yield from _provider_model(names, dep.provider, dep.model or model, file,
                                       f"{base}.deployments[{i}]")
        for i, entry in enumerate(balanced.fallback_chain):
            yield from _target(names, entry, file, f"{base}.fallback_chain[{i}]", provider_ok=True)
    for capability, models in routing.capabilities.items():
        for i, entry in enumerate(models):
            path = f"routing.capabilities.{capability}[{i}]"
            if unalias(routing.aliases, entry).startswith(CAPABILITY_PREFIX):  # compiled one after another:
                # one listing another would get none of it, or its first group (routing/table.py)
                yield Problem(file, path, f"{entry!r} is a capability route; name a model or a provider/model "
                              "pair here")
            else:
                yield from _target(names, entry, file, path, provider_ok=False)
    for alias, target in routing.aliases.items():
        if alias in names.served:
            yield Problem(file, f"routing.aliases.{alias}", f"alias {alias!r} hides the model of that name "
                          f"served by {', '.join(names.served[alias])}", severity="warning")
        if alias == target:
            yield Problem(file, f"routing.aliases.{alias}", "an alias cannot point at itself")
        else:
            yield from _target(names, target, file, f"routing.aliases.{alias}", provider_ok=False)
    for model, chain in mappings.fallbacks.items():
        if not names.is_model(model) and not any(c in model for c in "*?["):
            yield Problem(file, f"fallbacks.{model}", f"{model!r} is not a routed model",
                          severity="warning", suggestion=names.suggest(model, providers=False))
        for i, entry in enumerate(chain):
            yield from _target(names, entry, file, f"fallbacks.{model}[{i}]", provider_ok=True)
    for public, owners in names.served.items():
        if len(owners) > 1 and public not in routing.load_balancing and public not in routing.exact_matches:
            yield Problem(file, "routing", f"model {public!r} is served by {', '.join(owners)}; "
                          "they are tried in provider priority order", severity="warning")


def unalias(aliases: Mapping[str, str], name: str) -> str:
    """``name``, or the alias's target followed to the end (one step per alias at most: cycles fail at load)."""
    for _ in range(len(aliases)):
        if name not in aliases:
            break
        name = aliases[name]
    return name


def fallback_edges(mappings: MappingsConfig) -> dict[str, list[str]]:
    """Model → the models its fallback chains name (provider entries are leaves)."""
    routing = mappings.routing
    edges: dict[str, list[str]] = {}
    for model, exact in routing.exact_matches.items():
        edges.setdefault(model, []).extend(exact.fallback_chain)
    for model, balanced in routing.load_balancing.items():
        edges.setdefault(model, []).extend(balanced.fallback_chain)
    for model, chain in mappings.fallbacks.items():
        if not any(c in model for c in "*?["):
            edges.setdefault(model, []).extend(chain)
    for alias, target in routing.aliases.items():
        edges.setdefault(alias, []).append(target)
    return edges


def _check_cycles(names: Names, mappings: MappingsConfig, file: str) -> Iterator[Problem]:
    edges = fallback_edges(mappings)
    reported: set[frozenset[str]] = set()
    for start in edges:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    cycle = frozenset(trail)
                    if cycle not in reported:
                        reported.add(cycle)
                        yield Problem(file, "fallbacks", "fallback cycle: "
                                      + " → ".join([*trail, start]))
                elif nxt not in trail and nxt in edges:
                    stack.append((nxt, [*trail, nxt]))
