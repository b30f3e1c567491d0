"""``labgate serve``: run the gateway (optionally several worker processes)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from typing import Any

from labgate.config.load import Config, load_config
from labgate.config.problems import ConfigError

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def register(commands: Any) -> None:
    p = commands.add_parser("serve", help="run the gateway")
    p.add_argument("--config", metavar="DIR", help="config directory or labgate.yaml "
                   "(default: discover local engines)")
    p.add_argument("--host", help="listen address (default from gateway.yaml, else 127.0.0.1)")
    p.add_argument("--port", type=_port, help="listen port (default from gateway.yaml, else 4000; 0 = any free)")
    p.add_argument("--workers", type=_positive, help="worker processes sharing the port (default 1)")
    p.set_defaults(run=run)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535)")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    from labgate.telemetry.logs import configure_logging

    _install_uvloop()
    try:
        config = load_config(args.config) if args.config else asyncio.run(_discovered())
    except ConfigError as exc:
        print(f"labgate: the config is invalid:\n{exc}", file=sys.stderr)
        return 1
    configure_logging(config.gateway.logging.level)
    for warning in config.warnings:
        print(f"labgate: {warning}", file=sys.stderr)
    server = config.gateway.server
    host = args.host or server.host
    port = server.port if args.port is None else args.port
    workers = args.workers or server.workers
    sock = _listen(host, port)
    port = sock.getsockname()[1]
    _banner(config, host, port, workers)
    if workers == 1:
        return asyncio.run(_serve(config, host, sock))
    return _prefork(config, host, sock, workers)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _discovered() -> Config:
    from labgate.config.defaults import default_config, describe, discover

    found = await discover()
    print(describe(found), file=sys.stderr)
    return default_config(found)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"labgate: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _banner(config: Config, host: str, port: int, workers: int) -> None:
    auth = config.gateway.auth.master_key_env
    if auth and os.environ.get(auth):
        key_line = f"auth: master key from ${auth}"
    elif auth:
        key_line = f"auth: ${auth} is not set — NO AUTH, every client is accepted"
    else:
        key_line = "auth: no master key configured — NO AUTH, every client is accepted"
    active = [n for n, p in config.providers.items() if p.status == "active"]
    print(f"labgate: config {config.source}; providers: {', '.join(active) or 'none'}; {key_line}",
          file=sys.stderr)
    print(f"labgate: listening on http://{host}:{port} ({workers} worker{'s' * (workers > 1)})",
          file=sys.stderr, flush=True)


async def _serve(config: Config, host: str, sock: socket.socket) -> int:
    from labgate.server.serve import start_gateway

    running = await start_gateway(config, host=host, sock=sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # held since fork, if we are a worker
    await stop.wait()
    print("labgate: shutting down; letting in-flight requests finish", file=sys.stderr, flush=True)
    await running.stop()
    return 0


def _prefork(config: Config, host: str, sock: socket.socket, workers: int) -> int:
    """Fork workers that share the listening socket; the parent relays signals."""
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            # a stop signal that arrives while this worker starts waits until it can shut down cleanly
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            os._exit(asyncio.run(_serve(config, host, sock)))
        children.append(pid)
    sock.close()

    def relay(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, relay)
    signal.signal(signal.SIGINT, relay)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status
