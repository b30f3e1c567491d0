"""``gateway.yaml`` → ``store:``: where request history goes and how much of it is kept."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from labgate.config.schema.base import Strict

Capture = Literal["full", "metadata", "none"]


class StoreConfig(Strict):
    """Request history.

    ``url`` is a SQLite file path (relative paths are relative to the config
    directory; SQLAlchemy's ``sqlite:///relative.db`` and ``sqlite:////abs/path.db``
    also work) or a ``postgresql://``
    URL. Unset means ``history.db`` in the data directory: ``$LABGATE_DATA_DIR``,
    else ``$XDG_DATA_HOME/labgate``, else ``~/.local/share/labgate``.
    """

    url: str | None = None
    # metadata (default): everything but content — private, and cheap on the hot path;
    # full: + messages and responses (what `history replay` needs); none: no history
    capture: Capture = "metadata"
    retention_days: float | None = Field(default=None, gt=0)  # unset: keep forever
    queue_size: int = Field(default=20_000, ge=1)  # records waiting for the writer; past it they are dropped
    batch_size: int = Field(default=500, ge=1)  # records per transaction
    flush_interval_s: float = Field(default=0.5, gt=0)  # a crash loses at most about this much history
    client_ip: bool = True  # store the client's address
    # process (default): rows are built and written by a child process, off the serving core and its GIL;
    # thread: in the gateway process (a thread for SQLite, the event loop for PostgreSQL)
    writer: Literal["process", "thread"] = "process"
    # pin the writer process to these CPUs (default: wherever the OS puts it)
    writer_cpus: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    # the writer process's niceness: 0 competes with serving for the CPU (no drops); 10 or more: serving first
    writer_nice: int = Field(default=0, ge=0, le=19)
    # how often the gateway sends its batch to the writer process: a gateway crash loses at most this much
    send_interval_s: float = Field(default=0.01, gt=0, le=5)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url is None:
            return None
        scheme, sep, _ = url.partition("://")
        if sep and scheme not in ("postgresql", "postgres", "sqlite"):
            raise ValueError(f"unsupported store scheme {scheme!r}: use a SQLite file path, "
                             "sqlite:///path or postgresql://…")
        if not url.strip():
            raise ValueError("must not be empty")
        return url
