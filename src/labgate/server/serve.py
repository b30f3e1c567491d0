"""Starting and stopping a gateway in the running event loop."""

from __future__ import annotations

import socket
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
from labgate.store.writer import history_for
from labgate.telemetry.logs import AccessLog
from labgate.telemetry.metrics import Metrics


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
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), close upstreams,
        then write the history still queued."""
        runtime = self.gateway.runtime
        await self.server.shutdown(runtime.config.gateway.server.shutdown_grace_s if grace is None else grace)
        if self.reloader is not None:
            await self.reloader.aclose()  # stop watching; runtimes retired by reloads close now
        await self.gateway.runtime.aclose()
        keyring = self.gateway.runtime.auth.keyring
        if keyring is not None:
            await keyring.aclose()
        if self.gateway.history is not None:
            await self.gateway.history.close()


async def start_gateway(config: Config, *, host: str | None = None, port: int | None = None,
                        sock: socket.socket | None = None,
                        access_log: AccessLog | None = None, source: ConfigSource | None = None,
                        loaded: Loaded | None = None,
                        on_reload: Callable[[ReloadResult], None] | None = None,
                        shared_limits: str | None = None) -> RunningGateway:
    """Build the runtime, open the history store (``store:``), and listen; ``port=0`` picks a free port.

    ``shared_limits``: the SQLite file worker processes share limit counters in (``--workers N``)."""
    server_config = config.gateway.server
    history = history_for(config.gateway.store, source=config.source)
    if history is not None:
        await history.start()
    keyring = await open_keyring(config)
    try:
        gateway = Gateway(Runtime.build(config, access_log=access_log, keyring=keyring,
                                        shared_limits=shared_limits), history=history,
                          metrics=Metrics.from_config(config.gateway.metrics))
        # hot reload: `source` says where to read the config again (SIGHUP, /admin/config/reload, watch)
        reloader = Reloader(gateway, loaded or loaded_from(config), source=source, access_log=access_log,
                            on_applied=on_reload)
        host = server_config.host if host is None else host
        server = HttpServer(build_app(gateway, reloader=reloader, listen_host=host), error_response=error_response,
                            limits=server_limits(server_config))
        reloader.in_flight = server.busy_tasks
        if gateway.metrics is not None:
            gateway.metrics.in_flight = lambda: max(server.inflight - 1, 0)  # read by a scrape: not counting it
        bound = await server.start(host, server_config.port if port is None else port, sock=sock)
        await reloader.start()
    except BaseException:
        if keyring is not None:
            await keyring.aclose()
        if history is not None:
            await history.close()
        raise
    return RunningGateway(gateway, server, host, bound, reloader)
