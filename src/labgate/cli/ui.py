"""``labgate ui``: the Lab UI on its own port, talking to a gateway elsewhere.

The gateway serves the same UI itself at ``/ui/`` (nothing to run); this
command is for a UI on another host or port (the seeds' port 5001). The
browser calls the gateway directly, so the gateway must allow this origin:
``cors.allow_origins: ["http://HOST:5001"]`` in its ``gateway.yaml``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any
from urllib.parse import urlsplit


def register(commands: Any) -> None:
    p = commands.add_parser("ui", help="serve the Lab UI on its own port, talking to a gateway")
    p.add_argument("--gateway", default="http://127.0.0.1:4000", help="the gateway's URL (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001, help="default %(default)s")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    parts = urlsplit(args.gateway)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(f"labgate ui: --gateway must be an http(s) URL, got {args.gateway!r}", file=sys.stderr)
        return 2
    from labgate.cli.serve import _install_uvloop

    _install_uvloop()
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from labgate.server.ui import start_ui_server

    try:
        server, port = await start_ui_server(args.gateway, host=args.host, port=args.port)
    except OSError as exc:
        print(f"labgate ui: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    origin = f"http://{args.host}:{port}"
    print(f"labgate ui: {origin}/ui/ → gateway {args.gateway}\n"
          f"  the gateway must allow this origin: cors.allow_origins: [\"{origin}\"] in its gateway.yaml\n"
          "Ctrl-C stops.", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(2.0)
    return 0
