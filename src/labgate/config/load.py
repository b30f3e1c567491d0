"""Read a config directory (or a single ``labgate.yaml``) into validated config models.

Order of work: read YAML → substitute ``${VAR}`` → validate each file with
its schema (errors name the file and the key path, with "did you mean") →
cross-file checks (``checks.py``). Nothing here builds runtime objects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from labgate.config.problems import ConfigError, Problem, closest
from labgate.config.schema.gateway import GatewayConfig
from labgate.config.schema.mappings import MappingsConfig
from labgate.config.schema.ports import PortsConfig
from labgate.config.schema.providers import ProviderConfig
from labgate.providers.registry import TYPES

FILES = {"providers": "providers.yaml", "mappings": "model-mappings.yaml",
         "gateway": "gateway.yaml", "experiments": "experiments.yaml", "ports": "ports.yaml"}
SINGLE_FILE = "labgate.yaml"
# Top-level sections of the single-file form, and the file each one stands for.
SECTIONS = {"providers": "providers", "routing": "mappings", "fallbacks": "mappings",
            "server": "gateway", "auth": "gateway", "logging": "gateway", "resilience": "gateway",
            "store": "gateway", "metrics": "gateway", "config": "gateway", "ports": "ports",
            "state": "gateway", "cache": "gateway"}
M = TypeVar("M", bound=BaseModel)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class Config:
    """The validated config: every file's model, plus where it came from."""

    providers: Mapping[str, ProviderConfig]
    mappings: MappingsConfig
    gateway: GatewayConfig
    source: str
    warnings: tuple[Problem, ...] = field(default=())
    ports: PortsConfig = field(default_factory=PortsConfig)  # ports.yaml: the local service registry


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config directory or a single YAML file; raise :class:`ConfigError`."""
    raw, names = read_raw(Path(path), env=os.environ if env is None else env)
    return build_config(raw, names, source=str(path))


def read_raw(path: Path, *, env: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The raw YAML of each config part, keyed like :data:`FILES`, plus each part's file name."""
    problems: list[Problem] = []
    raw: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    if path.is_dir():
        single = path / SINGLE_FILE
        if single.exists() and not (path / FILES["providers"]).exists():
            return read_raw(single, env=env)
        for part, filename in FILES.items():
            file = path / filename
            names[part] = str(file)
            if file.exists():
                raw[part] = _read_yaml(file, env, problems)
        if "providers" not in raw:
            problems.append(Problem(str(path), "", f"no {FILES['providers']} (or {SINGLE_FILE}) here"))
    elif path.is_file():
        document = _read_yaml(path, env, problems)
        for key, value in document.items():
            part = SECTIONS.get(key)
            if part is None:
                hint = closest(key, SECTIONS)
                problems.append(Problem(str(path), key, "unknown top-level section",
                                        suggestion=hint[0] if hint else None))
                continue
            raw.setdefault(part, {})[key] = value
        names = dict.fromkeys(FILES, str(path))
    else:
        problems.append(Problem(str(path), "", "no such file or directory"))
    if problems:
        raise ConfigError(problems)
    return raw, names


def _read_yaml(file: Path, env: Mapping[str, str], problems: list[Problem]) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(Problem(str(file), "", f"cannot read: {exc.strerror}"))
        return {}
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problems.append(Problem(str(file), "", f"invalid YAML: {where}{getattr(exc, 'problem', exc)}"))
        return {}
    missing: list[str] = []
    document = _substitute(document, env, missing)
    for name in dict.fromkeys(missing):
        problems.append(Problem(str(file), "", f"environment variable ${{{name}}} is not set"))
    if document is None:
        return {}
    if not isinstance(document, dict):
        problems.append(Problem(str(file), "", "the top level must be a mapping"))
        return {}
    return document


def _substitute(value: Any, env: Mapping[str, str], missing: list[str]) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in string values (after parsing, so comments never count)."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = env.get(name)
            if value or (value is not None and default is None):
                return value
            if default is None:  # as in the shell, `:-` also stands in for an empty value
                missing.append(name)
            return default or ""

        return _VAR.sub(one, value)
    if isinstance(value, dict):
        return {k: _substitute(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, missing) for v in value]
    return value


def build_config(raw: Mapping[str, Mapping[str, Any]], names: Mapping[str, str], *,
                 source: str) -> Config:
    """Validate each part with its schema, then across files; raise :class:`ConfigError`."""
    from labgate.config.checks import check_config  # checks import the schema, not us

    problems: list[Problem] = []
    providers = _providers(raw.get("providers", {}), names.get("providers", source), problems)
    mappings = _validate(MappingsConfig, raw.get("mappings", {}), names.get("mappings", source),
                         "", problems)
    gateway = _validate(GatewayConfig, raw.get("gateway", {}), names.get("gateway", source),
                        "", problems)
    ports = _validate(PortsConfig, raw.get("ports", {}), names.get("ports", source), "", problems)
    if problems:
        raise ConfigError(problems)
    assert mappings is not None and gateway is not None and ports is not None
    config = Config(providers, mappings, gateway, source, ports=ports)
    problems = check_config(config, names)
    if any(p.severity == "error" for p in problems):
        raise ConfigError(problems)
    return Config(providers, mappings, gateway, source, warnings=tuple(problems), ports=ports)


def _providers(raw: Mapping[str, Any], file: str, problems: list[Problem]) -> dict[str, ProviderConfig]:
    unknown = set(raw) - {"providers"}
    for key in sorted(unknown):
        problems.append(Problem(file, key, "unknown top-level key",
                                suggestion="providers" if closest(key, ["providers"]) else None))
    section = raw.get("providers") or {}
    if not isinstance(section, dict):
        problems.append(Problem(file, "providers", "must be a mapping of provider name → settings"))
        return {}
    out: dict[str, ProviderConfig] = {}
    for name, body in section.items():
        path = f"providers.{name}"
        if not isinstance(body, dict):
            problems.append(Problem(file, path, "must be a mapping"))
            continue
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in TYPES:  # a list or mapping is unhashable
            hint = closest(str(kind), TYPES) if kind else []
            message = "`type` is required" if kind is None else f"unknown provider type {kind!r}"
            problems.append(Problem(file, f"{path}.type", f"{message}; one of: {', '.join(TYPES)}",
                                    suggestion=hint[0] if hint else None))
            continue
        config = _validate(TYPES[kind].config, body, file, path, problems)
        if config is not None:
            out[str(name)] = config
    return out


def _validate(model: type[M], data: Any, file: str, prefix: str,
                            problems: list[Problem]) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(_problem(model, error, file, prefix))
        return None


def _problem(model: type[BaseModel], error: Any, file: str, prefix: str) -> Problem:
    loc = [str(part) for part in error["loc"]]
    path = ".".join([prefix, *loc] if prefix else loc)
    suggestion = None
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
        hint = closest(loc[-1], _fields_at(model, loc[:-1]))
        suggestion = hint[0] if hint else None
    return Problem(file, path, message, suggestion=suggestion)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names allowed at ``loc`` inside ``model`` (best effort, for suggestions)."""
    current: Any = model
    item = False  # the previous part was a dict or tuple field: this part is a key or an index
    for part in loc:
        if item:
            item = False
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        current, item = _model_of(annotation), get_origin(annotation) in (dict, tuple, list)
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
