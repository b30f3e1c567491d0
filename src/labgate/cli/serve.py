"""``labgate serve``: run the gateway (optionally several worker processes)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labgate.config.load import Config
from labgate.config.problems import ConfigError
from labgate.store import default_data_dir

if TYPE_CHECKING:
    from labgate.config.reload import ConfigSource, Loaded, ReloadResult

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_HELD_SIGNALS = {*_STOP_SIGNALS, signal.SIGHUP}  # SIGHUP: reload the config


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
    from labgate.config.reload import ConfigSource, load_files
    from labgate.state.cache import preload
    from labgate.telemetry.logs import configure_logging
    from labgate.telemetry.traces import missing_sdk

    _install_uvloop()
    loaded: Loaded | None = None
    try:
        if args.config:  # remembered, so that a reload reads the same files again
            loaded, source = load_files(Path(args.config)), ConfigSource(path=Path(args.config))
            config = loaded.config
        else:  # a reload runs discovery again
            config, source = asyncio.run(_discovered()), ConfigSource(load=_rediscover)
    except ConfigError as exc:
        print(f"labgate: the config is invalid:\n{exc}", file=sys.stderr)
        return 1
    if config.gateway.tracing.enabled and (problem := missing_sdk()) is not None:
        print(f"labgate: {problem}", file=sys.stderr)
        return 1
    configure_logging(config.gateway.logging.level)
    for warning in config.warnings:
        print(f"labgate: {warning}", file=sys.stderr)
    _port_warnings(config)
    server = config.gateway.server
    host = args.host or server.host
    port = server.port if args.port is None else args.port
    workers = args.workers or server.workers
    preload(config)  # slow imports (the Redis client) before the port accepts: accepted means answered soon
    sock = _listen(host, port)
    port = sock.getsockname()[1]
    # a SIGHUP sent as soon as we say we listen waits until the reload handler is installed
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    _banner(config, host, port, workers)
    if workers == 1:
        return asyncio.run(_serve(config, host, sock, source, loaded))
    return _prefork(config, host, sock, workers, source, loaded)


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


async def _rediscover() -> Config:
    from labgate.config.defaults import default_config, discover

    return default_config(await discover())


def _port_warnings(config: Config) -> None:
    """Live conflicts with ``ports.yaml`` (a registered port held by another process): warnings at start."""
    if not config.ports.ports:
        return
    from labgate.config.ports import inspect

    states = asyncio.run(inspect(config.ports.ports, file="ports.yaml", health=False,
                                 gateway_port=config.gateway.server.port))
    for state in states:
        for problem in state.problems:
            if problem.severity == "error":
                print(f"labgate: warning: port conflict: {problem}", file=sys.stderr)


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
    from labgate.server.origin import Edge, is_loopback

    auth = config.gateway.auth.master_key_env
    keyed = bool(auth and os.environ.get(auth))
    if keyed:
        key_line = f"auth: master key from ${auth}"
    elif auth:
        key_line = f"auth: ${auth} is not set — NO AUTH, every client is accepted"
    else:
        key_line = "auth: no master key configured — NO AUTH, every client is accepted"
    active = [n for n, p in config.providers.items() if p.status == "active"]
    print(f"labgate: config {config.source}; providers: {', '.join(active) or 'none'}; {key_line}",
          file=sys.stderr)
    hosts = Edge.from_config(config.gateway, listen_host=host, auth_enabled=keyed).allowed_hosts
    print("labgate: answering for " + ("any Host" if hosts is None else f"Host {', '.join(hosts)} and IP addresses")
          + "; browser origins: " + (", ".join(config.gateway.cors.allow_origins) or "its own only"),
          file=sys.stderr)
    if not keyed and not is_loopback(host):
        print(f"labgate: WARNING: listening on {host}, reachable from other machines, with NO master key: "
              "anyone who can reach this port can use your providers and spend their keys. Set "
              "auth.master_key_env (and the variable it names) or listen on 127.0.0.1.", file=sys.stderr)
    print(f"labgate: listening on http://{host}:{port} ({workers} worker{'s' * (workers > 1)}); "
          f"Lab UI at http://{host}:{port}/ui/", file=sys.stderr, flush=True)


async def _serve(config: Config, host: str, sock: socket.socket, source: ConfigSource | None = None,
                 loaded: Loaded | None = None, *, worker: bool = False, metrics_group: str | None = None,
                 shared_limits: str | None = None) -> int:
    from labgate.server.serve import start_gateway

    # a worker that applied a reload from the admin API asks the parent to reload its siblings too
    on_reload = _reload_siblings if worker else None
    # Stop signals are handled from before the first request can be served (the socket is
    # already listening, and start-up may still be opening the history store).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    running = await start_gateway(config, host=host, sock=sock, source=source, loaded=loaded, on_reload=on_reload,
                                  metrics_group=metrics_group, shared_limits=shared_limits)
    reloads: set[asyncio.Task[Any]] = set()

    def reload() -> None:
        assert running.reloader is not None
        task = loop.create_task(running.reloader.reload(trigger="SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)  # held since fork, if we are a worker
    await stop.wait()
    print("labgate: shutting down; letting in-flight requests finish", file=sys.stderr, flush=True)
    await running.stop()
    return 0


def _reload_siblings(result: ReloadResult) -> None:
    os.kill(os.getppid(), signal.SIGHUP)  # the parent relays it to every worker; this one finds no change


def _prefork(config: Config, host: str, sock: socket.socket, workers: int, source: ConfigSource | None = None,
             loaded: Loaded | None = None) -> int:
    """Fork workers that share the listening socket; the parent relays signals (SIGHUP too)."""
    from labgate.telemetry.group import make_group_dir, remove_group_dir

    children: list[int] = []
    group = make_group_dir(workers)  # the workers' metrics sockets: a scrape adds up the whole group
    # without Redis, the workers share rate limit and budget counters in a SQLite file (docs/limits.md)
    limits = shared_limits_path()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # until the parent can relay it
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            # a signal that arrives while this worker starts waits until it can act on it cleanly
            signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
            os._exit(asyncio.run(_serve(config, host, sock, source, loaded, worker=True, metrics_group=group,
                                        shared_limits=limits)))
        children.append(pid)
    sock.close()

    def relay_hup(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGHUP)

    signal.signal(signal.SIGHUP, relay_hup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})

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
    remove_group_dir(group)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.unlink(limits + suffix)
    return status


def shared_limits_path() -> str:
    """A fresh file for this server's shared limit counters (they live as long as the server)."""
    directory = default_data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = str(directory / f"limits-{os.getpid()}.db")
    for suffix in ("", "-wal", "-shm"):  # left by an earlier server that had this pid and was killed
        with contextlib.suppress(OSError):
            os.unlink(path + suffix)
    return path
