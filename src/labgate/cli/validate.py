"""``labgate validate``: check a config directory the way ``serve`` would, without serving."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from typing import Any

import orjson

from labgate.config.load import Config, load_config
from labgate.config.problems import ConfigError, Problem


def register(commands: Any) -> None:
    p = commands.add_parser("validate", help="validate a config directory (exit 0 valid, 1 invalid)")
    p.add_argument("--config", metavar="DIR", default=".", help="config directory or labgate.yaml")
    p.add_argument("--json", action="store_true", help="print a JSON report (for CI)")
    p.add_argument("--check-providers", action="store_true",
                   help="also reach each active provider and check that it has the configured models")
    p.add_argument("--check-ports", action="store_true",
                   help="also check ports.yaml: conflicts in the files and on this machine are errors")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return report(args.config, exc.problems, as_json=args.json, valid=False)
    summary = {"providers": len(config.providers),
               "active_providers": sum(p.status == "active" for p in config.providers.values())}
    problems = list(config.warnings)
    if args.check_providers or args.check_ports:
        problems = asyncio.run(_live_checks(config, problems, providers=args.check_providers,
                                            ports=args.check_ports))
    valid = not any(p.severity == "error" for p in problems)
    return report(args.config, tuple(problems), as_json=args.json, valid=valid, summary=summary)


async def _live_checks(config: Config, problems: list[Problem], *, providers: bool, ports: bool) -> list[Problem]:
    """``--check-providers`` / ``--check-ports``: what the machine says, added to the file checks."""
    if ports:
        from labgate.cli.ports import audit

        static, states = await audit(config)  # the same report as `labgate ports`
        problems = [p for p in problems if p not in {replace(s, severity="warning") for s in static}] + static
        problems += [p for state in states for p in state.problems]
    if providers:
        from labgate.config.probe import check_providers

        problems += [p for report in await check_providers(config) for p in report.problems]
    return problems


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
