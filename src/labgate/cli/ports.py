"""``labgate ports``: each registered port's state, and which process holds it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from labgate.cli.style import Style, shown
from labgate.config.load import FILES, Config, load_config
from labgate.config.ports import PortState, inspect
from labgate.config.problems import ConfigError, Problem


def register(commands: Any) -> None:
    p = commands.add_parser("ports", help="show the state of the ports registered in ports.yaml")
    p.add_argument("--config", metavar="DIR", default=".", help="config directory or labgate.yaml")
    p.add_argument("--required", action="store_true", help="only the services marked required")
    p.add_argument("--port", type=int, action="append", metavar="N",
                   help="only this port (repeatable; an unregistered port shows who holds it)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"labgate: the config is invalid:\n{exc}", file=sys.stderr)
        return 1
    if not config.ports.ports and not args.port:
        print(f"labgate: no {FILES['ports']} in {args.config}: nothing is registered "
              "(see docs/operations.md#ports)", file=sys.stderr)
        return 1
    static, states = asyncio.run(audit(config, required_only=args.required, only=args.port))
    if args.json:
        sys.stdout.write(orjson.dumps({"ports": [s.as_dict() for s in states],
                                       "problems": [p.as_dict() for p in static]},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(table(states, Style.for_stream(sys.stdout, args.color), static))
    errors = [p for s in states for p in s.problems] + static
    return 1 if any(p.severity == "error" for p in errors) else 0


def ports_file(config: Config) -> str:
    """Where the registry of ``config`` was read from (for problems)."""
    return config.files.get("ports") or str(Path(config.source) / FILES["ports"])


async def audit(config: Config, *, required_only: bool = False,
                only: list[int] | None = None) -> tuple[list[Problem], list[PortState]]:
    """What ``labgate ports`` and ``labgate validate --check-ports`` both report, as errors: the
    registry's conflicts in the files (two services on one port, the gateway's port taken), then
    each port's live state."""
    from labgate.config.checks import port_conflicts

    lines = {(p.file, p.path, p.message): p.line for p in config.warnings}  # found at load, with their lines
    static = [replace(p, line=lines.get((p.file, p.path, p.message)))
              for p in port_conflicts(config, {"ports": ports_file(config)})]
    return static, await check(config, required_only=required_only, only=only)


async def check(config: Config, *, required_only: bool = False, only: list[int] | None = None) -> list[PortState]:
    """The registry's live state; a required service that is down counts as an error here."""
    states = await inspect(config.ports.ports, file=ports_file(config), only=only, required_only=required_only,
                           gateway_port=config.gateway.server.port)
    if required_only:  # asking about required services: one that is down fails the check
        states = [replace(s, problems=tuple(replace(p, severity="error") if "not listening" in p.message else p
                                            for p in s.problems)) for s in states]
    return states


def table(states: list[PortState], style: Style, static: list[Problem] | None = None) -> str:
    rows: list[tuple[str, ...]] = [("SERVICE", "PORT", "PROTO", "REQ", "STATE", "PROCESS", "HEALTH")]
    for s in states:
        state = "listening" if s.listening else ("reserved" if s.reserved else "free")
        rows.append(tuple(shown(cell) for cell in (
            s.name or "-", str(s.port), s.protocol, "yes" if s.required else "",
            state, ", ".join(map(str, s.holders)) or ("?" if s.listening else ""), s.health or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        if i == 0:
            line = style.bold(line)
        elif any(p.severity == "error" for p in states[i - 1].problems):
            line = style.red(line)
        elif states[i - 1].problems:
            line = style.yellow(line)
        lines.append(line)
    problems = [*(static or ()), *(p for s in states for p in s.problems)]
    for problem in problems:
        paint = style.red if problem.severity == "error" else style.yellow
        lines.append(paint(shown(str(problem))))
    errors = sum(p.severity == "error" for p in problems)
    lines.append(f"{len(states)} port(s), {errors} problem(s)")
    return "\n".join(lines)
