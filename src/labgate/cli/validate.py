"""``labgate validate``: check a config directory the way ``serve`` would, without serving."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from labgate.config.load import load_config
from labgate.config.problems import ConfigError, Problem


def register(commands: Any) -> None:
    p = commands.add_parser("validate", help="validate a config directory (exit 0 valid, 1 invalid)")
    p.add_argument("--config", metavar="DIR", default=".", help="config directory or labgate.yaml")
    p.add_argument("--json", action="store_true", help="print a JSON report (for CI)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return report(args.config, exc.problems, as_json=args.json, valid=False)
    summary = {"providers": len(config.providers),
               "active_providers": sum(p.status == "active" for p in config.providers.values())}
    return report(args.config, config.warnings, as_json=args.json, valid=True, summary=summary)


def report(source: str, problems: tuple[Problem, ...], *, as_json: bool, valid: bool,
           summary: dict[str, int] | None = None) -> int:
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if as_json:
        doc = {"config": source, "valid": valid, "errors": [p.as_dict() for p in errors],
               "warnings": [p.as_dict() for p in warnings], **(summary or {})}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for problem in problems:
            print(problem)
        verdict = "valid" if valid else "INVALID"
        print(f"{source}: {verdict} ({len(errors)} error(s), {len(warnings)} warning(s))")
    return 0 if valid else 1
