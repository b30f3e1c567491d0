"""``ports.yaml``: the registry of the local services around the gateway.

One entry per service (the gateway itself, the engines, Redis, the UI):
which port it owns, how to tell it is healthy, and whether the lab needs it.
``labgate ports`` and ``labgate validate --check-ports`` compare it with what
really listens on the machine.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from labgate.config.schema.base import Strict


class PortConfig(Strict):
    """One registered service and the port it owns."""

    port: int = Field(ge=1, le=65535)
    protocol: Literal["http", "https", "tcp", "udp", "grpc", "redis", "postgres"] = "http"
    host: str = "127.0.0.1"
    required: bool = False  # the lab does not work without it (``labgate ports --required``)
    status: Literal["active", "reserved"] = "active"  # reserved: kept free for a future service
    health_url: str | None = None
    process: str | None = None  # the process name expected to hold the port (e.g. ``ollama``)
    service: str | None = None  # its systemd unit, for the operator
    description: str | None = None

    @field_validator("health_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class PortsConfig(Strict):
    ports: dict[str, PortConfig] = Field(default_factory=dict)
