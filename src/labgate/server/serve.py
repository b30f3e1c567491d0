"""Starting and stopping a gateway in the running event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from labgate.config.load import Config
from labgate.config.reload import ConfigSource, Loaded, Reloader, ReloadResult, loaded_from
from labgate.config.schema.gateway import ServerConfig
from labgate.errors import LabgateError
from labgate.gateway import Gateway
from labgate.keys import open_keyring
from labgate.runtime import Runtime
from labgate.server.app import build_app, echo_client_id
from labgate.server.envelopes import openai_error
from labgate.server.http import HttpServer, Response, ServerLimits
from labgate.server.ids import request_id
from labgate.server.metrics import exposition
from labgate.server.replicas import Replicas
from labgate.store.writer import history_for
from labgate.telemetry.group import FOR_SIBLING, WorkerGroup
from labgate.telemetry.logs import AccessLog
from labgate.telemetry.metrics import Metrics
from labgate.telemetry.traces import Tracer

log = logging.getLogger("labgate.server")


def error_response(exc: LabgateError, headers: Mapping[str, str]) -> Response:
    """The server's own errors (malformed HTTP, limits): the OpenAI envelope with a request id."""
    return echo_client_id(headers, openai_error(exc, request_id()))


def server_limits(config: ServerConfig) -> ServerLimits:
    """The ``server.*`` limits of ``gateway.yaml`` as the HTTP server takes them."""
    return ServerLimits(max_body_bytes=config.max_body_bytes, max_header_bytes=config.max_header_bytes,
                        keepalive_timeout=config.keepalive_timeout_s,
                        request_read_timeout=config.request_read_timeout_s,
                        max_connections=config.max_connections, max_connections_per_ip=config.max_connections_per_ip)


@dataclass(slots=True)
class RunningGateway:
    gateway: Gateway
    server: HttpServer
    host: str
    port: int
    reloader: Reloader | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Turn unready, answer queued requests 503, stop accepting, let in-flight requests finish
        (up to ``grace`` s), close upstreams, then write the history still queued.

        A step still running after ``STOP_WATCH_S`` is named in a warning, and again at each interval
        (an operator waiting for the process to exit sees what it waits for)."""
        runtime = self.gateway.runtime
        self.gateway.draining = True  # /health/readiness answers 503 from now on
        runtime.drain()  # queued requests: 503 shutting_down at once; in-flight ones go on
        watch = _StopWatch()
        try:
            if runtime.config.gateway.server.drain_delay_s:
                watch.step = "server.drain_delay_s"
                await asyncio.sleep(runtime.config.gateway.server.drain_delay_s)
            watch.step = "in-flight requests"
            await self.server.shutdown(runtime.config.gateway.server.shutdown_grace_s if grace is None else grace)
            if self.gateway.metrics is not None and self.gateway.metrics.group is not None:
                watch.step = "the metrics of the worker group"
                await self.gateway.metrics.group.stop()
            if self.gateway.replicas is not None:
                watch.step = "the replica registry"
                await self.gateway.replicas.stop()
            if self.gateway.allocator is not None:
                watch.step = "the experiment allocator"
                await self.gateway.allocator.aclose()
            if self.reloader is not None:
                watch.step = "the config reloader and retired runtimes"
                await self.reloader.aclose()  # stop watching; runtimes retired by reloads close now
            watch.step = "the runtime (upstream connections, shared state)"
            await self.gateway.runtime.aclose()
            keyring = self.gateway.runtime.auth.keyring
            if keyring is not None:
                watch.step = "the key ring"
                await keyring.aclose()
            if self.gateway.history is not None:
                watch.step = "the history writer"
                await self.gateway.history.close()
            if self.gateway.traces is not None:
                watch.step = "the trace exporter"
                await asyncio.to_thread(self.gateway.traces.close)  # exports what is queued
        finally:
            watch.cancel()


STOP_WATCH_S = 10.0
"""How long a shutdown step runs before :meth:`RunningGateway.stop` names it in a warning."""


class _StopWatch:
    """Warns every ``STOP_WATCH_S`` with the shutdown step still running (``step``)."""

    def __init__(self) -> None:
        self.step = ""
        self.started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(STOP_WATCH_S, self._warn)

    def _warn(self) -> None:
        log.warning("shutdown: still waiting for %s (%.0f s since the stop began)", self.step,
                    time.monotonic() - self.started)
        self._handle = self._loop.call_later(STOP_WATCH_S, self._warn)

    def cancel(self) -> None:
        self._handle.cancel()


async def start_gateway(config: Config, *, host: str | None = None, port: int | None = None,
                        sock: socket.socket | None = None,
                        access_log: AccessLog | None = None, source: ConfigSource | None = None,
                        loaded: Loaded | None = None,
                        on_reload: Callable[[ReloadResult], None] | None = None,
                        metrics_group: str | None = None, shared_limits: str | None = None) -> RunningGateway:
    """Build the runtime, open the history store (``store:``), and listen; ``port=0`` picks a free port.

    ``metrics_group``: the directory a ``--workers N`` parent made, so a scrape adds up every worker.
    ``shared_limits``: the SQLite file worker processes share limit counters in (``--workers N``)."""
    server_config = config.gateway.server
    history = history_for(config.gateway.store, source=config.source)
    if history is not None:
        await history.start()
    keyring = await open_keyring(config)
    replicas = Replicas.from_config(config)  # state.url: circuits and reloads reach every replica
    try:
        share = replicas if replicas is not None and replicas.share_circuits else None
        gateway = Gateway(Runtime.build(config, access_log=access_log, keyring=keyring,
                                        shared_limits=shared_limits, circuit_share=share), history=history,
                          metrics=Metrics.from_config(config.gateway.metrics),
                          traces=Tracer.from_config(config.gateway.tracing))
        gateway.replicas = replicas
        limiter = gateway.runtime.limiter
        if limiter is not None and history is not None:  # budget spend survives restarts (state/seed.py)
            await limiter.seed(getattr(history, "store", None))
        # hot reload: `source` says where to read the config again (SIGHUP, /admin/config/reload, watch)
        if replicas is not None:
            on_reload = _both(on_reload, replicas.announce)
        reloader = Reloader(gateway, loaded or loaded_from(config), source=source, access_log=access_log,
                            on_applied=on_reload)
        host = server_config.host if host is None else host
        server = HttpServer(build_app(gateway, reloader=reloader, listen_host=host), error_response=error_response,
                            limits=server_limits(server_config))
        reloader.in_flight = server.busy_tasks
        if gateway.metrics is not None:
            # read by a scrape, not counting the scrape itself (unless a sibling worker asked: see group.py)
            gateway.metrics.in_flight = lambda: max(server.inflight - (not FOR_SIBLING.get()), 0)
            if metrics_group is not None:
                await _join_group(gateway, gateway.metrics, metrics_group)
            gateway.metrics.capacity = lambda: [(name, g.inflight, g.limit, g.waiting)
                                                for name, g in gateway.runtime.table.gates.items()]
        bound = await server.start(host, server_config.port if port is None else port, sock=sock)
        await reloader.start()
        if replicas is not None:
            await replicas.start(gateway, reloader)
    except BaseException:
        if replicas is not None:
            await replicas.stop()
        if keyring is not None:
            await keyring.aclose()
        if history is not None:
            await history.close()
        raise
    return RunningGateway(gateway, server, host, bound, reloader)


async def _join_group(gateway: Gateway, metrics: Metrics, directory: str) -> None:
    group = WorkerGroup(directory)
    await group.start(lambda: exposition(gateway, metrics))
    metrics.group = group


def _both(first: Callable[[ReloadResult], None] | None,
          then: Callable[[ReloadResult], None]) -> Callable[[ReloadResult], None]:
    if first is None:
        return then

    def both(result: ReloadResult) -> None:
        first(result)
        then(result)
    return both
