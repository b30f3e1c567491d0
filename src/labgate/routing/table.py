"""The route table: every routable name compiled to deployments at config load.

A request does dictionary lookups here; globs are compiled once.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from labgate.config.checks import CAPABILITY_PREFIX, Names, capabilities, unalias
from labgate.config.load import Config
from labgate.config.problems import closest
from labgate.config.schema.providers import LOCAL_TYPES, ModelConfig, ProviderConfig
from labgate.errors import ModelNotFoundError
from labgate.providers.base import Adapter
from labgate.routing.circuit import Health
from labgate.routing.engines import EngineLoad
from labgate.routing.gate import Gate

_DYNAMIC_CACHE = 4096  # routes made on the fly for glob matches and provider/model pairs


@dataclass(eq=False, slots=True)
class Deployment:
    """One model on one provider: the unit that is attempted, balanced and health-tracked."""

    key: str  # "provider/model"
    provider: str
    model: str  # the upstream's name for it
    adapter: Adapter
    timeout: float
    info: ModelConfig | None = None
    health: Health = field(default_factory=Health)
    gate: Gate | None = None  # the provider's capacity (max_parallel_requests), shared by its models
    region: str | None = None
    failover_only: bool = False  # only when nothing better is healthy (balancer.plan)
    local: bool = False  # a local engine (ollama, llama.cpp, vLLM, LM Studio): the local_first strategy's "local"
    capacity: int | None = None  # the provider's max_parallel_requests: local_first's load is inflight / this
    engine: EngineLoad | None = None  # the engine's own load, polled (engine_load in providers.yaml)

    def __post_init__(self) -> None:
        self.health.key = self.key  # its name among replicas (shared circuits: server/replicas.py)

    def release(self) -> None:
        """Give back what the attempt loop took for one attempt (attempts._send inlines it for a whole reply)."""
        self.health.inflight -= 1
        if self.gate is not None:
            self.gate.release()


@dataclass(eq=False, slots=True)
class Group:
    """Deployments balanced together with one strategy."""

    deployments: tuple[Deployment, ...]
    strategy: str = "priority"
    weights: tuple[float, ...] = ()
    turn: int = 0  # round-robin position
    prefer_local_under: float = 0.9  # local_first: a local deployment this loaded (of its capacity) goes last


@dataclass(frozen=True, slots=True)
class Route:
    """A routable name: its primary group, then its fallback groups in order."""

    name: str
    groups: tuple[Group, ...]
    local_first: bool = field(init=False)  # its primary group's strategy is local_first (x-labgate-routing)

    def __post_init__(self) -> None:
        object.__setattr__(self, "local_first", bool(self.groups) and self.groups[0].strategy == "local_first")


class RouteTable:
    """Resolves a requested model name to a :class:`Route`."""

    def __init__(self, config: Config, adapters: Mapping[str, Adapter], *,
                 previous: RouteTable | None = None) -> None:
        """``previous``: the table a reload replaces; unchanged providers keep their gates and circuits."""
        self._providers = {n: p for n, p in config.providers.items() if p.status == "active"}
        self._adapters = adapters
        self._mappings = config.mappings
        self._deployments: dict[str, Deployment] = {}  # the config's
        self._dynamic_deployments: dict[str, Deployment] = {}  # made for names clients sent (provider/model)
        self._compiled = False
        self._primary: dict[str, Group] = {}
        self._names = Names.of(config.providers, config.mappings)
        queue, spill = config.gateway.queue, self._mappings.routing.prefer_local_under
        self.gates: dict[str, Gate] = {
            name: Gate(p.max_parallel_requests, max_queue=queue.max_queue_size if p.max_queue is None else p.max_queue,
                 spill_at=p.max_parallel_requests * (spill or 1.0))
            for name, p in self._providers.items() if p.max_parallel_requests is not None}
        self.engines: dict[str, EngineLoad] = {  # engine_load: polled from the first request on
            name: EngineLoad(name, p) for name, p in self._providers.items() if p.engine_load is not None}
        kept: set[str] = set()  # providers whose config a reload did not change
        if previous is not None:
            kept = {n for n, p in self._providers.items() if previous._providers.get(n) == p}
            for name in kept & self.gates.keys() & previous.gates.keys():
                if previous.gates[name].spill_at == self.gates[name].spill_at:
                    self.gates[name] = previous.gates[name]  # its in-flight count and line go on
        self._patterns = [(re.compile(fnmatch.translate(p.pattern)), p.provider, p.fallback_chain)
                          for p in self._mappings.routing.patterns if p.provider in self._providers]
        self._globs = [(re.compile(fnmatch.translate(k)), v) for k, v in self._mappings.fallbacks.items()
                       if any(c in k for c in "*?[")]
        self._dynamic: dict[str, Route] = {}
        self._capabilities: dict[str, tuple[Group, ...]] = {}
        self.routes: dict[str, Route] = {}
        # Order matters: fallback chains may name aliases and capability routes, and an
        # alias takes its target's whole route, fallbacks included.
        self._compile_primaries()
        self._compile_capabilities()
        self.routes.update((name, self._route(name, group)) for name, group in self._primary.items())
        self.routes.update((name, Route(name, groups)) for name, groups in self._capabilities.items())
        self._compile_aliases()
        self._compiled = True
        if previous is not None:  # circuit state survives a reload for deployments that did not change
            for key, dep in self._deployments.items():
                before = previous._deployments.get(key)
                if before is not None and dep.provider in kept:
                    dep.health = before.health

    def every_deployment(self) -> list[Deployment]:
        """Every deployment known now: the config's and those made for names clients sent."""
        return [*self._deployments.values(), *self._dynamic_deployments.values()]

    # -- lookup (the hot path) -------------------------------------------------

    def resolve(self, name: str) -> Route:
        route = self.routes.get(name) or self._dynamic.get(name)
        if route is not None:
            return route
        route = self._resolve_dynamic(name)
        if route is None:
            raise ModelNotFoundError(name, closest(name, self.routes))
        if len(self._dynamic) >= _DYNAMIC_CACHE:
            self._dynamic.clear()
        self._dynamic[name] = route
        return route

    @property
    def deployments(self) -> Mapping[str, Deployment]:
        return self._deployments

    def mark_region(self, region: str, *, down: bool) -> list[str]:
        """Take every deployment of ``region`` out of routing (its circuits held open) or put it back.

        Returns the deployments changed. Costs nothing per request: planning already skips open circuits.
        """
        changed = [d for d in self._deployments.values() if d.region == region]
        for dep in changed:
            dep.health.open_until = math.inf if down else 0.0
            if not down:
                dep.health.failures = 0
            dep.health.last_error = f"region {region!r} marked down" if down else dep.health.last_error
        return [d.key for d in changed]

    # -- compile (config load) ---------------------------------------------------

    def _deployment(self, provider: str, model: str) -> Deployment | None:
        config = self._providers.get(provider)
        if config is None:
            return None
        known, made = self._deployments, self._dynamic_deployments
        key = f"{provider}/{model}"
        found = known.get(key) or made.get(key)
        if found is None:
            info = next((m for m in config.models if model in (m.name, m.alias)), None)
            upstream = info.name if info is not None else model
            key = f"{provider}/{upstream}"
            found = known.get(key) or made.get(key)
            if found is None:
                found = Deployment(key, provider, upstream, self._adapters[provider],
                                   config.timeout_s, info, gate=self.gates.get(provider), region=config.region,
                                   failover_only=config.failover_only, local=config.type in LOCAL_TYPES,
                                   capacity=config.max_parallel_requests, engine=self.engines.get(provider))
                if self._compiled:  # a name a client sent (provider/anything): bounded, like _dynamic
                    if len(made) >= _DYNAMIC_CACHE:
                        made.clear()
                    made[key] = found
                else:
                    known[key] = found
        return found

    def _compile_primaries(self) -> None:
        by_priority = sorted(self._providers.items(), key=lambda kv: kv[1].priority)
        for pname, provider in by_priority:
            for model in provider.models:
                dep = self._deployment(pname, model.name)
                for public in filter(None, (model.name, model.alias)):
                    self._add(public, dep)
        routing = self._mappings.routing
        for name, exact in routing.exact_matches.items():
            dep = self._deployment(exact.provider, exact.model or name)
            if dep is not None:
                self._primary[name] = Group((dep,))
        for name, lb in routing.load_balancing.items():
            pairs = [(self._deployment(d.provider, d.model or name), d.weight) for d in lb.deployments]
            live = [(d, w) for d, w in pairs if d is not None]
            if live:
                self._primary[name] = Group(tuple(d for d, _ in live), lb.strategy,
                                            tuple(w for _, w in live), prefer_local_under=lb.prefer_local_under)

    def _add(self, public: str, dep: Deployment | None) -> None:
        if dep is None:
            return
        group = self._primary.get(public)
        if group is None:
            self._primary[public] = Group((dep,))
        elif dep not in group.deployments:
            group.deployments = (*group.deployments, dep)

    def _compile_capabilities(self) -> None:
        routing = self._mappings.routing
        for capability in sorted(capabilities(self._providers, self._mappings)):
            models = routing.capabilities.get(capability) or _models_with(self._providers, capability)
            groups = tuple(g for m in models for g in self._target_groups(m, requested=m)[:1])
            if groups:
                self._capabilities[CAPABILITY_PREFIX + capability] = groups

    def _compile_aliases(self) -> None:
        """An alias routes exactly like its target: same groups, fallbacks included."""
        for alias in self._mappings.routing.aliases:
            target = self._unalias(alias)
            route = self.routes.get(target) or self._resolve_dynamic(target)
            if route is not None:
                self.routes[alias] = Route(alias, route.groups)

    def _unalias(self, name: str) -> str:
        return unalias(self._mappings.routing.aliases, name)

    def _same_model(self, provider: str, requested: str) -> str:
        """What "the same model" is called on ``provider``, for a provider-name fallback entry."""
        config = self._providers[provider]
        if any(requested in (m.name, m.alias) for m in config.models):
            return requested
        primary = self._primary.get(requested)
        if primary is not None:
            return primary.deployments[0].model
        pair = self._names.split_pair(requested)
        return pair[1] if pair is not None else requested

    def _route(self, name: str, primary: Group, chain: tuple[str, ...] | None = None) -> Route:
        if chain is None:
            chain = self._chain_for(name)
        groups = [primary]
        for entry in chain:
            found = self._target_groups(entry, requested=name, fallback=True)
            groups.extend(found if self._unalias(entry) in self._capabilities else found[:1])
        return Route(name, tuple(groups))

    def _chain_for(self, name: str) -> tuple[str, ...]:
        routing = self._mappings.routing
        if name in routing.load_balancing and routing.load_balancing[name].fallback_chain:
            return routing.load_balancing[name].fallback_chain
        if name in routing.exact_matches and routing.exact_matches[name].fallback_chain:
            return routing.exact_matches[name].fallback_chain
        if name in self._mappings.fallbacks:
            return self._mappings.fallbacks[name]
        for glob, chain in self._globs:
            if glob.match(name):
                return chain
        return ()

    def _target_groups(self, entry: str, *, requested: str, fallback: bool = False) -> tuple[Group, ...]:
        """The groups a target entry stands for (a model's own route, or one deployment)."""
        entry = self._unalias(entry)
        if entry in self._primary:
            return (self._primary[entry],)
        if entry in self._capabilities:
            return self._capabilities[entry]
        pair = self._names.split_pair(entry)
        if pair is not None:
            dep = self._deployment(*pair)
            return (Group((dep,)),) if dep else ()
        if fallback and entry in self._providers:
            dep = self._deployment(entry, self._same_model(entry, requested))
            return (Group((dep,)),) if dep else ()
        for regex, provider, _ in self._patterns:
            if regex.match(entry):
                dep = self._deployment(provider, entry)
                return (Group((dep,)),) if dep else ()
        return ()

    def _resolve_dynamic(self, name: str) -> Route | None:
        pair = self._names.split_pair(name)
        if pair is not None and pair[0] in self._providers:
            dep = self._deployment(*pair)
            if dep is not None:
                return self._route(name, Group((dep,)))
        for regex, provider, chain in self._patterns:
            if regex.match(name):
                dep = self._deployment(provider, name)
                if dep is not None:
                    return self._route(name, Group((dep,)), chain or None)
        return None


def _models_with(providers: Mapping[str, ProviderConfig], capability: str) -> list[str]:
    ordered = sorted(providers.values(), key=lambda p: p.priority)
    return list(dict.fromkeys(m.alias or m.name for p in ordered for m in p.models
                              if capability in m.capabilities))
