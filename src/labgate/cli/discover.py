"""``labgate discover``: find local engines and print ready-to-use ``providers.yaml`` entries."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson
import yaml

from labgate.config.defaults import STANDARD_ENGINES, Engine, Found, ModelDetails, discover


def register(commands: Any) -> None:
    p = commands.add_parser("discover", help="probe local engine ports and print providers.yaml entries")
    p.add_argument("--host", default="127.0.0.1", help="where the engines run (default 127.0.0.1)")
    p.add_argument("--engine", action="append", metavar="TYPE:PORT",
                   help="probe this port as this engine type too (repeatable), e.g. vllm:8002")
    p.add_argument("--timeout", type=float, default=0.8, help="seconds per probe (default 0.8)")
    p.add_argument("--json", action="store_true", help="print what was found as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    engines = list(STANDARD_ENGINES)
    for spec in args.engine or ():
        kind, _, port = spec.partition(":")
        if not port.isdigit():
            print(f"labgate: --engine wants TYPE:PORT, got {spec!r}", file=sys.stderr)
            return 2
        engines.append(Engine(f"{kind}_{port}", kind, int(port)))
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
