"""Orders a route's deployments into the attempts to make, skipping open circuits.

Tiers: a model served by several providers is tried in their ``priority`` order, so the best
tier whose circuit is closed takes the traffic and a tier whose circuits opened (or whose
region was marked down) hands over to the next one until it recovers. A ``failover_only``
deployment is planned only when no other candidate of the route is healthy.
"""

from __future__ import annotations

import math
import random
import time

from labgate.errors import NoHealthyDeploymentError
from labgate.routing.circuit import Circuit
from labgate.routing.engines import busy as engine_busy
from labgate.routing.engines import load as engine_load
from labgate.routing.table import Deployment, Group, Route


def order(group: Group) -> tuple[Deployment, ...] | list[Deployment]:
    """The group's deployments in the order its strategy wants them tried."""
    deps = group.deployments
    if len(deps) == 1 or group.strategy == "priority":
        return deps
    if group.strategy == "round_robin":
        start = group.turn % len(deps)
        group.turn += 1
        return deps[start:] + deps[:start]
    if group.strategy == "least_busy":
        # fewest in flight (relative to max_parallel_requests, where set); ties rotate like round_robin,
        # so a lightly loaded group still spreads its requests
        start = group.turn % len(deps)
        group.turn += 1
        return sorted(deps[start:] + deps[:start], key=_load)
    if group.strategy == "local_first":
        return local_first(group)
    # weighted: a weighted random permutation (Efraimidis–Spirakis keys)
    weights = group.weights or (1.0,) * len(deps)
    keyed = sorted(zip(deps, weights, strict=True), key=lambda dw: -random.random() ** (1.0 / dw[1]))
    return [d for d, _ in keyed]


def _load(dep: Deployment) -> float:
    gate = dep.gate
    if dep.engine is not None:  # what the engine itself reports counts too (routing/engines.py)
        return engine_load(dep.engine, dep.health.inflight, None if gate is None else gate.limit)
    return dep.health.inflight if gate is None else dep.health.inflight / gate.limit


def local_first(group: Group) -> list[Deployment]:
    """Local deployments under ``prefer_local_under`` of their capacity, then cloud ones, then busy local ones.

    A local deployment without a capacity (no ``max_parallel_requests``) is never "busy"; one whose
    circuit is open is skipped by :func:`plan`, so the cloud is tried when every local one is failing.
    """
    under: list[Deployment] = []
    busy: list[Deployment] = []
    cloud: list[Deployment] = []
    for dep in group.deployments:
        if not dep.local:
            cloud.append(dep)
        elif dep.capacity and engine_busy(dep.engine, dep.health.inflight) >= group.prefer_local_under * dep.capacity:
            busy.append(dep)
        else:
            under.append(dep)
    return under + cloud + busy


def local_first_decision(route: Route, chosen: list[Deployment]) -> str | None:
    """What ``x-labgate-routing`` says for a local_first route: ``local``, or why the cloud goes first."""
    group = route.groups[0] if route.groups else None
    if group is None or group.strategy != "local_first" or not chosen:
        return None
    if chosen[0].local:
        return "local"
    locals_ = [d for d in group.deployments if d.local]
    if not locals_:
        return "cloud (no local deployment)"
    if any(d in chosen for d in locals_):
        return "cloud (local over prefer_local_under)"
    return "cloud (local failing)"


def plan(route: Route, circuit: Circuit, *, max_attempts: int) -> list[Deployment]:
    """The deployments to attempt, in order, at most ``max_attempts`` of them."""
    now = time.monotonic()
    chosen: list[Deployment] = []
    seen: set[str] = set()
    cooling: list[Deployment] = []
    reserve: list[Deployment] = []  # failover_only: planned only when nothing else is healthy
    for group in route.groups:
        deps = group.deployments  # order(), without its frame for the groups it leaves as they are
        for dep in deps if len(deps) == 1 or group.strategy == "priority" else order(group):
            if dep.key in seen:
                continue
            seen.add(dep.key)
            if dep.health.open_until > now:  # not circuit.available(), without its frame
                cooling.append(dep)
            elif dep.failover_only:
                reserve.append(dep)
            else:
                chosen.append(dep)
                if len(chosen) == max_attempts:
                    return chosen
    if not chosen and reserve:
        return reserve[:max_attempts]
    if not chosen:
        ends = [d.health.open_until for d in cooling if d.health.open_until != math.inf]  # inf: region down
        wait = min(ends) - now if ends else None
        names = ", ".join(f"{d.key} ({d.health.last_error})" for d in cooling)
        raise NoHealthyDeploymentError(
            f"No healthy deployment for model {route.name!r}: every candidate is cooling down "
            f"after repeated failures: {names}", retry_after=max(1.0, round(wait or 1.0)))
    return chosen
