"""``labgate discover``: find local engines and print ready-to-use ``providers.yaml`` entries."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import Any

import orjson
import yaml

from labgate.config.defaults import STANDARD_ENGINES, Engine, Found, ModelDetails, discover


def register(commands: Any) -> None:
    p = commands.add_parser("discover", help="probe local engine ports and print providers.yaml entries")
    p.add_argument("--host", type=host, default="127.0.0.1", help="where the engines run (default 127.0.0.1)")
    p.add_argument("--engine", type=engine, action="append", metavar="TYPE:PORT",
                   help=f"probe this port as this engine type too (repeatable), e.g. vllm:8002; "
                        f"TYPE is one of {', '.join(ENGINE_TYPES)}")
    p.add_argument("--timeout", type=timeout, default=0.8,
                   help=f"seconds per probe, more than 0 and at most {MAX_TIMEOUT_S:g} (default 0.8)")
    p.add_argument("--json", action="store_true", help="print what was found as JSON")
    p.set_defaults(run=run)


# Engine types that answer `GET /v1/models` on a local port (what discovery can probe).
ENGINE_TYPES = ("ollama", "llama_cpp", "vllm", "lmstudio", "openai_compatible")
MAX_TIMEOUT_S = 60.0


def host(text: str) -> str:
    """``--host``: a host name or address (a bare IPv6 address is bracketed for the URL)."""
    if not text or any(c.isspace() or c in "/@?#" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    return f"[{text}]" if ":" in text and not text.startswith("[") else text


def engine(text: str) -> Engine:
    """``--engine TYPE:PORT``."""
    kind, sep, port = text.partition(":")
    if not sep or not kind:
        raise argparse.ArgumentTypeError(f"expected TYPE:PORT (e.g. vllm:8002), got {text!r}")
    if kind not in ENGINE_TYPES:
        raise argparse.ArgumentTypeError(f"unknown engine type {kind!r}; one of: {', '.join(ENGINE_TYPES)}")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port {port!r} is not a number from 1 to 65535")
    return Engine(f"{kind}_{int(port)}", kind, int(port))


def timeout(text: str) -> float:
    """``--timeout``: seconds, more than 0 and at most :data:`MAX_TIMEOUT_S`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds")
    return value


def run(args: argparse.Namespace) -> int:
    engines = [*STANDARD_ENGINES, *(args.engine or ())]
    found = asyncio.run(discover(args.host, tuple(engines), timeout=args.timeout))
    if args.json:
        sys.stdout.write(orjson.dumps([_as_dict(f) for f in found], option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(providers_yaml(found, engines=tuple(engines), host=args.host))
    return 0 if found else 1


def _as_dict(found: Found) -> dict[str, Any]:
    return {"name": found.engine.name, "type": found.type, "port": found.engine.port, "base_url": found.base_url,
            "models": list(found.models),
            "details": [{"name": d.name, "size_bytes": d.size_bytes, "quantization": d.quantization,
                         "parameter_size": d.parameter_size, "family": d.family} for d in found.details]}


def providers_yaml(found: list[Found], *, engines: tuple[Engine, ...], host: str) -> str:
    """A ``providers.yaml`` document for what answered, with what did not as comments."""
    lines = [f"# labgate discover: {len(found)} engine(s) answered on {host}"]
    for engine in engines:
        if not any(f.engine is engine for f in found):
            lines.append(f"#   nothing on port {engine.port} ({engine.type})")
    lines.append("providers:" if found else "providers: {}")
    for f in found:
        lines.append(f"  {f.engine.name}:")
        lines.append(f"    type: {f.type}")
        lines.append(f"    base_url: {f.base_url}")
        if not f.models:
            lines.append("    models: []   # the engine lists no model yet")
            continue
        lines.append("    models:")
        details = {d.name: d for d in f.details}
        for name in f.models:
            detail = details.get(name)
            lines.append(f"      - name: {_scalar(name)}")
            if detail is not None and detail.quantization:
                lines.append(f"        quantization: {_scalar(detail.quantization)}")
            note = _note(detail)
            if note:
                lines[-1] += f"   # {note}"
    return "\n".join(lines)


def _scalar(value: str) -> str:
    """A YAML scalar for ``value`` (quoted only when plain style would change its meaning)."""
    return yaml.safe_dump(value, default_style=None).removesuffix("\n...\n").strip()


def _note(detail: ModelDetails | None) -> str:
    if detail is None:
        return ""
    parts = []
    if detail.size_bytes:
        parts.append(f"{detail.size_bytes / 1e9:.1f} GB")
    if detail.parameter_size:
        parts.append(f"{detail.parameter_size} parameters")
    if detail.family:
        parts.append(detail.family)
    return ", ".join(parts)
