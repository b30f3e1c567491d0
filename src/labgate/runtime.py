"""Runtime: the immutable snapshot a request works against, built from a Config.

Everything a request needs is decided here, at load: the route table,
adapters with their pooled connections, auth keys, limits. A reload builds a
new Runtime and swaps the reference; requests in flight keep the old one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from labgate.auth import Auth
from labgate.config.load import Config
from labgate.cost import Prices
from labgate.errors import OverCapacityError
from labgate.keys import KeyRing
from labgate.providers.base import Adapter
from labgate.providers.registry import TYPES
from labgate.routing.attempts import planned
from labgate.routing.circuit import Circuit, CircuitShare
from labgate.routing.experiments import Experiments
from labgate.routing.leases import SharedCapacity
from labgate.routing.pace import Pace
from labgate.routing.queue import Queue
from labgate.routing.rescue import Rescue
from labgate.routing.table import RouteTable
from labgate.state.cache import Cache, cache_for
from labgate.state.limits import Limiter, limiter_for
from labgate.telemetry.logs import AccessLog


@dataclass(frozen=True, slots=True, eq=False)
class Runtime:
    config: Config
    adapters: Mapping[str, Adapter]
    table: RouteTable
    circuit: Circuit
    auth: Auth
    access_log: AccessLog
    max_attempts: int
    request_timeout: float
    plan_size: int  # candidates to plan: max_attempts, or all when a provider has limits (attempts.planned)
    cache: Cache | None = None  # the response cache (state/cache.py); None: not configured
    queue: Queue | None = None  # None unless some provider sets max_parallel_requests
    rescue: Rescue | None = None  # None unless resilience.stream_rescue
    pace: Pace | None = None  # stream deadlines (first token, idle); None unless configured
    capacity: SharedCapacity | None = None  # capacity across replicas (routing/leases.py); None: per process
    prices: Prices | None = None  # what each deployment costs (cost.py)
    limiter: Limiter | None = None  # rpm/tpm limits and budgets (state/limits.py); None: nothing limited
    experiments: Experiments | None = None  # A/B variant assignment (routing/experiments.py); None: none running
    # the SQLite file ``--workers N`` share limit counters in (no Redis); kept across reloads, so limits a
    # reload turns on are shared by the workers too, not counted per worker
    shared_limits: str | None = None

    @classmethod
    def build(cls, config: Config, *, access_log: AccessLog | None = None,
              previous: Runtime | None = None, keyring: KeyRing | None = None,
              shared_limits: str | None = None, circuit_share: CircuitShare | None = None) -> Runtime:
        """``previous``: the Runtime a reload replaces: unchanged providers keep capacity and circuit state,
        the cache keeps its entries when its backend is unchanged, and its virtual keys are kept.
        ``keyring``: the process's virtual keys (None: off). ``shared_limits``: the SQLite file
        ``--workers N`` share rate limit and budget counters in (no Redis); a reload keeps ``previous``'s.
        ``circuit_share``: where circuits that open or close are told to the other replicas (server/replicas.py;
        a reload keeps the previous one)."""
        if shared_limits is None and previous is not None:
            shared_limits = previous.shared_limits
        adapters = {name: TYPES[p.type].build(p, name)
                    for name, p in config.providers.items() if p.status == "active"}
        gateway = config.gateway
        env_name = gateway.auth.master_key_env
        keys = [os.environ.get(env_name, "")] if env_name else []
        table = RouteTable(config, adapters, previous=None if previous is None else previous.table)
        prices = Prices.from_config(config)
        limiter = limiter_for(config, prices, previous=previous.limiter if previous is not None else None,
                              shared_path=shared_limits)
        return cls(
            config=config,
            adapters=adapters,
            table=table,
            circuit=Circuit(gateway.resilience.circuit.failure_threshold, gateway.resilience.circuit.cooldown_s,
                            previous.circuit.share if previous is not None else circuit_share),
            auth=Auth(keys, keyring=previous.auth.keyring if previous is not None else keyring),
            access_log=access_log or AccessLog(enabled=gateway.logging.requests,
                                               client_ip=gateway.logging.client_ip,
                                               slow_ms=gateway.logging.slow_request_ms),
            max_attempts=gateway.resilience.max_attempts,
            request_timeout=gateway.server.request_timeout_s,
            plan_size=planned(gateway.resilience.max_attempts, limiter),
            cache=cache_for(config, previous=previous.cache if previous is not None else None),
            queue=Queue.of(gateway.queue) if table.gates else None,
            rescue=Rescue() if gateway.resilience.stream_rescue else None,
            pace=Pace.of(gateway.resilience),
            capacity=SharedCapacity.build(config, table.gates,
                                          previous=previous.capacity if previous is not None else None),
            prices=prices,
            limiter=limiter,
            experiments=Experiments.build(config.experiments),
            shared_limits=shared_limits,
        )

    def drain(self) -> None:
        """Shutdown begins: requests waiting for capacity get 503 ``shutting_down`` with retry-after now
        (and so do any that would queue from here on); requests in flight finish."""
        for gate in self.table.gates.values():
            gate.close(OverCapacityError("The gateway is shutting down; retry on another instance.",
                                         code="shutting_down", status=503, retry_after=1.0))

    async def aclose(self) -> None:
        self.access_log.flush()
        if self.cache is not None:
            await self.cache.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.capacity is not None:
            await self.capacity.aclose(self.table.gates)
        for engine in self.table.engines.values():
            await engine.aclose()
        for adapter in self.adapters.values():
            await adapter.aclose()
