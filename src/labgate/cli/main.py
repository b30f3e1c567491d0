"""``labgate``: the command line. One module per command group; this file wires them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from labgate.cli import backup, demo, discover, embeddings, history, migrate, ports, reload, serve, validate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labgate", description="Self-hosted AI gateway and lab.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, validate, demo, reload, backup, ports, discover, migrate, history, embeddings):
        module.register(commands)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
