"""Starting and stopping a gateway in the running event loop."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from labgate.config.load import Config
from labgate.errors import LabgateError
from labgate.gateway import Gateway
from labgate.runtime import Runtime
from labgate.server.app import build_app
from labgate.server.envelopes import openai_error
from labgate.server.http import HttpServer, Response
from labgate.server.ids import request_id
from labgate.telemetry.logs import AccessLog


def _error_response(exc: LabgateError) -> Response:
    return openai_error(exc, request_id({}))


@dataclass(slots=True)
class RunningGateway:
    gateway: Gateway
    server: HttpServer
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), close upstreams."""
        runtime = self.gateway.runtime
        await self.server.shutdown(runtime.config.gateway.server.shutdown_grace_s if grace is None else grace)
        await runtime.aclose()


async def start_gateway(config: Config, *, host: str | None = None, port: int | None = None,
                        sock: socket.socket | None = None,
                        access_log: AccessLog | None = None) -> RunningGateway:
    """Build the runtime and listen; ``port=0`` picks a free port."""
    server_config = config.gateway.server
    gateway = Gateway(Runtime.build(config, access_log=access_log))
    server = HttpServer(build_app(gateway), max_body_bytes=server_config.max_body_bytes,
                        error_response=_error_response,
                        keepalive_timeout=server_config.keepalive_timeout_s)
    host = server_config.host if host is None else host
    bound = await server.start(host, server_config.port if port is None else port, sock=sock)
    return RunningGateway(gateway, server, host, bound)
