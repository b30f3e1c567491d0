"""The built-in config: discover local engines on their standard ports.

Used when ``labgate serve`` is given no ``--config``. Each port is probed
once at start-up with a short timeout; whatever answers is routed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from labgate.config.load import Config, build_config
from labgate.errors import LabgateError
from labgate.providers.http import fetch
from labgate.providers.local_embeddings.config import BUILTIN_PROVIDER, builtin_provider, builtin_status

_PROBE_TIMEOUT_S = 0.8


@dataclass(frozen=True, slots=True)
class Engine:
    """A standard local port and the provider type usually found there."""

    name: str
    type: str
    port: int


STANDARD_ENGINES = (
    Engine("ollama", "ollama", 11434),
    Engine("llama_cpp", "llama_cpp", 8080),
    Engine("llama_cpp_8000", "llama_cpp", 8000),
    Engine("vllm", "vllm", 8001),
    Engine("lmstudio", "lmstudio", 1234),
)


@dataclass(frozen=True, slots=True)
class ModelDetails:
    """What an engine says about one model beyond its name (Ollama's ``/api/tags``)."""

    name: str
    size_bytes: int | None = None
    quantization: str | None = None
    parameter_size: str | None = None
    family: str | None = None


@dataclass(frozen=True, slots=True)
class Found:
    engine: Engine
    type: str  # may differ from the engine's usual type (vLLM also likes port 8000)
    base_url: str
    models: tuple[str, ...]
    details: tuple[ModelDetails, ...] = ()  # per model, when the engine tells more than names


async def discover(host: str = "127.0.0.1", engines: tuple[Engine, ...] = STANDARD_ENGINES,
                   *, timeout: float = _PROBE_TIMEOUT_S) -> list[Found]:
    """Every engine that answers ``GET /v1/models`` on its port, with the models it lists."""
    results = await asyncio.gather(*(_probe(host, e, timeout) for e in engines))
    return [r for r in results if r is not None]


async def _get_json(url: str, timeout: float) -> Any:
    """The JSON an engine answers with 200, or None for anything else (closed port, error, not JSON)."""
    try:
        status, body = await fetch(url, timeout=timeout, name="discovery")
        return orjson.loads(body) if status == 200 else None
    except (LabgateError, orjson.JSONDecodeError):
        return None


async def _probe(host: str, engine: Engine, timeout: float) -> Found | None:
    base = f"http://{host}:{engine.port}"
    data = await _get_json(base + "/v1/models", timeout)
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    models = tuple(str(m["id"]) for m in items if isinstance(m, dict) and "id" in m)
    owners = {str(m.get("owned_by", "")).lower() for m in items if isinstance(m, dict)}
    kind = "vllm" if "vllm" in owners else engine.type
    details = await _ollama_tags(base, timeout) if kind == "ollama" else ()
    return Found(engine, kind, base, models, details)


async def _ollama_tags(base: str, timeout: float) -> tuple[ModelDetails, ...]:
    """Size, quantization and parameter count of each model, from Ollama's native ``/api/tags``."""
    data = await _get_json(base + "/api/tags", timeout)
    entries = data.get("models") if isinstance(data, dict) else None
    out = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        found = entry.get("details")
        info: dict[str, Any] = found if isinstance(found, dict) else {}
        size = entry.get("size")
        out.append(ModelDetails(entry["name"], size if isinstance(size, int) else None,
                                _text(info.get("quantization_level")), _text(info.get("parameter_size")),
                                _text(info.get("family"))))
    return tuple(out)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def default_config(found: list[Found], *, embeddings: bool = True) -> Config:
    """A config routing every discovered model to the engine that serves it, plus (``embeddings``)
    the bundled embedding model when the ``[embeddings]`` extra and its weights are installed."""
    providers: dict[str, Any] = {
        f.engine.name: {"type": f.type, "base_url": f.base_url, "models": list(f.models),
                        "description": f"discovered on port {f.engine.port}"}
        for f in found
    }
    local = builtin_provider() if embeddings else None
    if local is not None:
        providers[BUILTIN_PROVIDER] = local
    return build_config({"providers": {"providers": providers}}, {}, source="built-in default")


def describe(found: list[Found], engines: tuple[Engine, ...] = STANDARD_ENGINES, *,
             embeddings: bool = True) -> str:
    """What discovery found (and, with ``embeddings``, whether the bundled embeddings are served), and
    how to add more, for the start-up banner."""
    lines = ["labgate: no --config given; using the built-in default (local engine discovery)."]
    for engine in engines:
        hit = next((f for f in found if f.engine is engine), None)
        if hit is None:
            lines.append(f"  - {engine.name:<15} port {engine.port:<6} not found")
        else:
            names = ", ".join(hit.models) or "(no models listed)"
            lines.append(f"  + {engine.name:<15} port {engine.port:<6} {hit.type}: {names}")
    if embeddings:
        lines.append(builtin_status())
    if not found:
        lines.append("  No local engine answered: every chat model is unknown (404). Start an engine, "
                     "then restart labgate." if embeddings and builtin_provider() is not None else
                     "  No local engine answered: every model is unknown (404). Start an engine, "
                     "then restart labgate.")
    lines.append("  To add providers or cloud APIs, write a config directory "
                 "(see examples/) and run: labgate serve --config DIR")
    return "\n".join(lines)
