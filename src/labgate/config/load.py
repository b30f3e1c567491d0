"""Read a config directory (or a single ``labgate.yaml``) into validated config models.

Order of work: read each file (``reader.py``: UTF-8, YAML, duplicate keys) →
substitute ``${VAR}`` (``variables.py``) → validate each file with its schema
(``explain.py`` words the errors: file, key path, line, "did you mean") →
cross-file checks (``checks.py``). Every failure on the way is a
:class:`Problem`, collected and raised together as one :class:`ConfigError`:
no other exception leaves :func:`load_config`. Nothing here builds runtime
objects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from labgate.config.explain import explain
from labgate.config.problems import ConfigError, Problem, closest
from labgate.config.reader import key_path, line_of, read_document
from labgate.config.schema.experiments import ExperimentsConfig
from labgate.config.schema.gateway import GatewayConfig
from labgate.config.schema.mappings import MappingsConfig
from labgate.config.schema.ports import PortsConfig
from labgate.config.schema.providers import ProviderConfig
from labgate.config.variables import substitute
from labgate.providers.registry import TYPES

FILES = {"providers": "providers.yaml", "mappings": "model-mappings.yaml",
         "gateway": "gateway.yaml", "experiments": "experiments.yaml", "ports": "ports.yaml"}
SINGLE_FILE = "labgate.yaml"
# Top-level sections of the single-file form, and the file each one stands for.
SECTIONS = {"providers": "providers", "routing": "mappings", "fallbacks": "mappings",
            "server": "gateway", "auth": "gateway", "logging": "gateway", "resilience": "gateway",
            "store": "gateway", "metrics": "gateway", "config": "gateway", "ports": "ports",
            "state": "gateway", "cache": "gateway", "tracing": "gateway", "experiments": "experiments"}
M = TypeVar("M", bound=BaseModel)
# A provider name is routed as the first part of `provider/model` and shown in headers and metrics.
PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = ("use 1 to 64 letters, digits, `_`, `-` or `.`, starting with a letter or digit "
             "(no `/`, spaces or other characters)")


@dataclass(frozen=True, slots=True)
class Config:
    """The validated config: every file's model, plus where it came from."""

    providers: Mapping[str, ProviderConfig]
    mappings: MappingsConfig
    gateway: GatewayConfig
    source: str
    warnings: tuple[Problem, ...] = field(default=())
    ports: PortsConfig = field(default_factory=PortsConfig)  # ports.yaml: the local service registry
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)  # experiments.yaml (A/B tests)
    # the file each part was read from, keyed like FILES (empty when built in memory)
    files: Mapping[str, str] = field(default_factory=dict, compare=False)


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config directory or a single YAML file; raise :class:`ConfigError`."""
    raw = read_raw(Path(path), env=os.environ if env is None else env)
    return build_config(raw.parts, raw.names, source=str(path), lines=raw.lines)


@dataclass(frozen=True, slots=True)
class Raw:
    """The files as read: each part's data (keyed like :data:`FILES`), file name, and key lines."""

    parts: dict[str, dict[str, Any]]
    names: dict[str, str]
    lines: dict[str, dict[str, int]]  # part → key path → line


def read_raw(path: Path, *, env: Mapping[str, str]) -> Raw:
    """Read every file of a config (no schema yet); raise :class:`ConfigError` on any read problem."""
    problems: list[Problem] = []
    raw: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    lines: dict[str, dict[str, int]] = {}
    if path.is_dir():
        single = path / SINGLE_FILE
        if single.exists() and not (path / FILES["providers"]).exists():
            return read_raw(single, env=env)
        for part, filename in FILES.items():
            file = path / filename
            names[part] = str(file)
            if file.exists():
                raw[part], lines[part] = _read_yaml(file, env, problems, required=part == "providers")
        if "providers" not in raw and not problems:
            problems.append(Problem(str(path), "", f"no {FILES['providers']} (or {SINGLE_FILE}) here"))
    elif path.is_file():
        document, where = _read_yaml(path, env, problems, required=True)
        for key, value in document.items():
            found = SECTIONS.get(key) if isinstance(key, str) else None
            if found is None:
                hint = closest(str(key), SECTIONS)
                problems.append(Problem(str(path), key_path("", key), "unknown top-level section",
                                        suggestion=hint[0] if hint else None, line=where.get(key_path("", key))))
                continue
            raw.setdefault(found, {})[key] = value
        names = dict.fromkeys(FILES, str(path))
        lines = dict.fromkeys(FILES, where)
    else:
        problems.append(Problem(str(path), "", "no such file or directory"))
    if problems:
        raise ConfigError(problems)
    return Raw(raw, names, lines)


def _read_yaml(file: Path, env: Mapping[str, str], problems: list[Problem], *,
               required: bool) -> tuple[dict[str, Any], dict[str, int]]:
    """One file's top-level mapping (empty on problems) and its key lines."""
    doc = read_document(file)
    problems.extend(doc.problems)
    if doc.problems:
        return {}, {}
    if doc.empty or doc.data is None:
        if required:
            problems.append(Problem(str(file), "", "the file is empty: it needs at least a `providers:` "
                                    "section (see docs/configuration.md)"))
        return {}, doc.lines
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else "a single value"
        problems.append(Problem(str(file), "", f"the top level must be a mapping of keys, not {kind}", line=1))
        return {}, {}
    document, found = substitute(doc.data, env, file=str(file), lines=doc.lines)
    problems.extend(found)
    return document, doc.lines


def build_config(raw: Mapping[str, Mapping[str, Any]], names: Mapping[str, str], *,
                 source: str, lines: Mapping[str, Mapping[str, int]] | None = None) -> Config:
    """Validate each part with its schema, then across files; raise :class:`ConfigError`."""
    from labgate.config.checks import check_config  # checks import the schema, not us

    lines = lines or {}
    problems: list[Problem] = []

    def validate(model: type[M], part: str) -> M | None:
        return _validate(model, raw.get(part, {}), names.get(part, source), "", problems, lines.get(part, {}))

    providers = _providers(raw.get("providers", {}), names.get("providers", source), problems,
                           lines.get("providers", {}))
    mappings, gateway = validate(MappingsConfig, "mappings"), validate(GatewayConfig, "gateway")
    ports, experiments = validate(PortsConfig, "ports"), validate(ExperimentsConfig, "experiments")
    if problems:
        raise ConfigError(problems)
    assert mappings is not None and gateway is not None and ports is not None and experiments is not None
    config = Config(providers, mappings, gateway, source, ports=ports, experiments=experiments, files=dict(names))
    problems = check_config(config, names)
    problems = [replace(p, line=line_of(p.path, lines.get(_part(p.file, names), {}))) if p.line is None else p
                for p in problems]
    if any(p.severity == "error" for p in problems):
        raise ConfigError(problems)
    return Config(providers, mappings, gateway, source, warnings=tuple(problems), ports=ports,
                  experiments=experiments, files=dict(names))


def _part(file: str, names: Mapping[str, str]) -> str:
    return next((part for part, name in names.items() if name == file), "")


def _providers(raw: Mapping[str, Any], file: str, problems: list[Problem],
               lines: Mapping[str, int]) -> dict[str, ProviderConfig]:
    for key in sorted(map(str, set(raw) - {"providers"})):
        path = key_path("", key)
        problems.append(Problem(file, path, "unknown top-level key", line=lines.get(path),
                                suggestion="providers" if closest(key, ["providers"]) else None))
    section = raw.get("providers") or {}
    if not isinstance(section, dict):
        problems.append(Problem(file, "providers", "expected a mapping of provider name → settings",
                                line=lines.get("providers")))
        return {}
    out: dict[str, ProviderConfig] = {}
    for name, body in section.items():
        path = key_path("providers", str(name))
        if not isinstance(name, str) or not PROVIDER_NAME.fullmatch(name):
            problems.append(Problem(file, path, f"{name!r} cannot be a provider name: {NAME_RULE}",
                                    line=line_of(path, lines)))
            continue
        if not isinstance(body, dict):
            problems.append(Problem(file, path, "expected a mapping of provider settings (`type`, "
                                    "`base_url`, `models`, ...)", line=line_of(path, lines)))
            continue
        config = _provider(name, body, file, problems, lines)
        if config is not None:
            out[name] = config
    return out


def _provider(name: str, body: dict[Any, Any], file: str, problems: list[Problem],
              lines: Mapping[str, int]) -> ProviderConfig | None:
    """One provider, validated by its type's schema; without a known type, every other mistake too."""
    path = f"providers.{name}"
    kind = body.get("type")
    if isinstance(kind, str) and kind in TYPES:
        return _validate(TYPES[kind].config, body, file, path, problems, lines)
    hint = closest(str(kind), TYPES) if kind is not None else []
    message = "`type` is required" if kind is None else f"unknown provider type {kind!r}"
    problems.append(Problem(file, f"{path}.type", f"{message}; one of: {', '.join(TYPES)}",
                            suggestion=hint[0] if hint else None, line=line_of(f"{path}.type", lines)))
    # Still check the rest against what any type accepts, so that every mistake shows at once.
    known = {field for adapter in TYPES.values() for field in adapter.config.model_fields}
    rest = {k: v for k, v in body.items() if k != "type" and (k in ProviderConfig.model_fields or k not in known)}
    _validate(ProviderConfig, {**rest, "type": "unknown"}, file, path, problems, lines)
    return None


def _validate(model: type[M], data: Any, file: str, prefix: str, problems: list[Problem],
              lines: Mapping[str, int]) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(explain(exc, model, data, file=file, prefix=prefix, lines=lines))
        return None
