"""Run a real gateway for tests: in the current loop, or in a thread for sync clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from labgate.config.load import Config, build_config
from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog

T = TypeVar("T")


def config_from(providers: dict[str, Any], mappings: dict[str, Any] | None = None,
                gateway: dict[str, Any] | None = None, *, experiments: list[dict[str, Any]] | None = None) -> Config:
    """A validated Config from plain dicts, shaped like the YAML files."""
    raw = {"providers": {"providers": providers}, "mappings": mappings or {}, "gateway": gateway or {},
           "experiments": {"experiments": experiments or []}}
    return build_config(raw, {}, source="test")


class LoopThread:
    """An event loop running in a daemon thread; ``run`` executes a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="labgate-loop")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@contextmanager
def gateway_in_thread(config: Config, *, access_log: AccessLog | None = None) -> Iterator[RunningGateway]:
    """A gateway on an ephemeral port, served from its own thread until the block ends."""
    thread = LoopThread()
    running = thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=access_log))
    try:
        yield running
    finally:
        thread.run(running.stop(grace=2.0))
        thread.close()
