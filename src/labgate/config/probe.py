"""``labgate validate --check-providers``: ask each active provider which models it really has.

A configured model the engine does not list is an error (requests for it
would fail), with the closest name the engine does list as the suggestion.
An engine that does not answer is a warning: the config is not wrong
because an engine is stopped. A cloud provider whose key variable is unset
is skipped with a warning.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from labgate.config.load import FILES, Config
from labgate.config.problems import Problem, closest
from labgate.errors import LabgateError
from labgate.providers.base import ModelLister
from labgate.providers.registry import TYPES

_TIMEOUT_S = 5.0
_KEYED = {"openai", "anthropic"}  # types that cannot list models without a key


@dataclass(frozen=True, slots=True)
class ProviderReport:
    name: str
    reachable: bool | None  # None: not checked
    models: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = field(default=())


async def check_providers(config: Config, *, timeout: float = _TIMEOUT_S) -> list[ProviderReport]:
    """One report per active provider, in config order."""
    file = config.source if config.source.endswith(".yaml") else f"{config.source}/{FILES['providers']}"
    names = [n for n, p in config.providers.items() if p.status == "active"]
    return list(await asyncio.gather(*(_check(config, name, file, timeout) for name in names)))


async def _check(config: Config, name: str, file: str, timeout: float) -> ProviderReport:
    provider = config.providers[name]
    path = f"providers.{name}"
    if provider.type in _KEYED and provider.api_key_env and not os.environ.get(provider.api_key_env):
        return ProviderReport(name, None, problems=(Problem(
            file, path, f"not checked: ${provider.api_key_env} is not set", severity="warning"),))
    adapter = TYPES[provider.type].build(provider, name)
    try:
        if not isinstance(adapter, ModelLister):
            return ProviderReport(name, None, problems=(Problem(
                file, path, f"not checked: a {provider.type} provider cannot list its models",
                severity="warning"),))
        try:
            listed = await adapter.list_models(timeout=timeout)
        except LabgateError as exc:
            return ProviderReport(name, False, problems=(Problem(
                file, path, f"unreachable: {exc.message}", severity="warning"),))
    finally:
        await adapter.aclose()
    problems = []
    available = set(listed)
    for i, model in enumerate(provider.models):
        if model.name not in available and f"{model.name}:latest" not in available:  # Ollama's default tag
            hint = closest(model.name, listed, n=1)
            problems.append(Problem(file, f"{path}.models[{i}]", f"{name} does not have model {model.name!r} "
                                    f"(it lists {len(listed)} model(s))", suggestion=hint[0] if hint else None))
    return ProviderReport(name, True, tuple(listed), tuple(problems))
