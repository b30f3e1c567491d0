"""``labgate``: the command line. One module per command group; this file wires them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from labgate.cli import (
    backup,
    cache,
    cost,
    demo,
    discover,
    embeddings,
    experiment,
    history,
    keys,
    load,
    logs,
    migrate,
    ports,
    reload,
    serve,
    test_request,
    ui,
    validate,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labgate", description="Self-hosted AI gateway and lab.")
    parser.add_argument("--version", action="version", version=f"labgate {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, validate, demo, reload, backup, ports, discover, migrate, history, embeddings, cache, keys,
                   cost, ui, logs, test_request, load, experiment):
        module.register(commands)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


def installed_version() -> str:
    """The installed distribution's version (``pyproject.toml``), or ``unknown`` when run from a bare tree."""
    try:
        return version("labgate")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
