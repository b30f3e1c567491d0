"""The balancer: order each group by its strategy, dedupe, cap, and skip open circuits."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from labgate.errors import NoHealthyDeploymentError
from labgate.routing import balancer
from labgate.routing.balancer import order, plan
from labgate.routing.circuit import Circuit, Health
from labgate.routing.gate import Gate
from labgate.routing.table import Deployment, Group, Route

CIRCUIT = Circuit(failure_threshold=3, cooldown_s=30)


def dep(key: str, *, inflight: int = 0, open_for: float = 0.0, error: str | None = None) -> Deployment:
    provider, _, model = key.partition("/")
    health = Health(inflight=inflight, last_error=error,
                    open_until=time.monotonic() + open_for if open_for else 0.0)
    return Deployment(key, provider, model, adapter=None, timeout=60.0, health=health)  # type: ignore[arg-type]


def names(deps: object) -> list[str]:
    return [d.key for d in deps]  # type: ignore[attr-defined]


A, B, C = dep("a/m"), dep("b/m"), dep("c/m")


# ---------------------------------------------------------------- order


def test_priority_keeps_the_configured_order() -> None:
    group = Group((A, B, C), "priority")
    assert [names(order(group)) for _ in range(3)] == [["a/m", "b/m", "c/m"]] * 3
    assert group.turn == 0


def test_round_robin_rotates_the_start() -> None:
    group = Group((A, B, C), "round_robin")
    assert [names(order(group)) for _ in range(4)] == [
        ["a/m", "b/m", "c/m"], ["b/m", "c/m", "a/m"], ["c/m", "a/m", "b/m"], ["a/m", "b/m", "c/m"]]


def test_a_single_deployment_is_never_reordered() -> None:
    group = Group((A,), "round_robin")
    assert (names(order(group)), names(order(group)), group.turn) == (["a/m"], ["a/m"], 0)


def test_least_busy_prefers_fewer_requests_in_flight_and_rotates_ties() -> None:
    busy, idle, some, also_idle = dep("a/m", inflight=5), dep("b/m"), dep("c/m", inflight=2), dep("d/m")
    group = Group((busy, idle, some, also_idle), "least_busy")
    assert [names(order(group)) for _ in range(3)] == [
        ["b/m", "d/m", "c/m", "a/m"], ["b/m", "d/m", "c/m", "a/m"], ["d/m", "b/m", "c/m", "a/m"]]


def test_least_busy_weighs_in_flight_against_each_deployments_capacity() -> None:
    small, large = dep("a/m", inflight=2), dep("b/m", inflight=3)
    small.gate, large.gate = Gate(2, max_queue=0), Gate(8, max_queue=0)
    assert names(order(Group((small, large), "least_busy"))) == ["b/m", "a/m"]  # 3/8 < 2/2


def test_weighted_picks_first_in_proportion_to_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balancer, "random", random.Random(20260101))
    group = Group((A, B, C), "weighted", (6.0, 3.0, 1.0))
    orders = [names(order(group)) for _ in range(6000)]
    firsts = Counter(o[0] for o in orders)
    shares = {k: round(v / len(orders), 2) for k, v in sorted(firsts.items())}
    assert shares == pytest.approx({"a/m": 0.6, "b/m": 0.3, "c/m": 0.1}, abs=0.025)
    assert {tuple(sorted(o)) for o in orders} == {("a/m", "b/m", "c/m")}  # always a permutation


def test_weighted_without_weights_is_uniform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balancer, "random", random.Random(7))
    group = Group((A, B), "weighted")
    firsts = Counter(names(order(group))[0] for _ in range(4000))
    assert firsts["a/m"] / 4000 == pytest.approx(0.5, abs=0.03)


# ---------------------------------------------------------------- plan


def test_plan_walks_groups_in_order_and_drops_repeats() -> None:
    route = Route("m", (Group((A, B), "priority"), Group((B,)), Group((C, A), "priority")))
    assert names(plan(route, CIRCUIT, max_attempts=10)) == ["a/m", "b/m", "c/m"]


def test_plan_stops_at_max_attempts() -> None:
    route = Route("m", (Group((A, B), "priority"), Group((C,))))
    assert names(plan(route, CIRCUIT, max_attempts=2)) == ["a/m", "b/m"]
    assert names(plan(route, CIRCUIT, max_attempts=1)) == ["a/m"]


def test_plan_applies_each_groups_strategy() -> None:
    pool = Group((A, B), "round_robin")
    route = Route("m", (pool, Group((C,))))
    assert [names(plan(route, CIRCUIT, max_attempts=4)) for _ in range(2)] == [
        ["a/m", "b/m", "c/m"], ["b/m", "a/m", "c/m"]]


def test_plan_skips_open_circuits() -> None:
    down = dep("b/m", open_for=30, error="boom")
    route = Route("m", (Group((A, down, C), "priority"),))
    assert names(plan(route, CIRCUIT, max_attempts=4)) == ["a/m", "c/m"]


def test_open_circuits_do_not_count_against_max_attempts() -> None:
    down = dep("a/m", open_for=30)
    route = Route("m", (Group((down, B), "priority"), Group((C,))))
    assert names(plan(route, CIRCUIT, max_attempts=2)) == ["b/m", "c/m"]


def test_all_open_is_no_healthy_deployment_with_retry_after() -> None:
    route = Route("m", (Group((dep("a/m", open_for=30.4, error="connection refused"),
                               dep("b/m", open_for=12.3, error="502")), "priority"),))
    with pytest.raises(NoHealthyDeploymentError) as info:
        plan(route, CIRCUIT, max_attempts=4)
    assert (info.value.status, info.value.retry_after, info.value.message) == (
        503, 12, "No healthy deployment for model 'm': every candidate is cooling down after repeated "
                 "failures: a/m (connection refused), b/m (502)")


def test_retry_after_is_at_least_one_second() -> None:
    route = Route("m", (Group((dep("a/m", open_for=0.2, error="x"),)),))
    with pytest.raises(NoHealthyDeploymentError) as info:
        plan(route, CIRCUIT, max_attempts=4)
    assert info.value.retry_after == 1.0


def test_a_repeat_does_not_end_its_group() -> None:
    route = Route("m", (Group((A,)), Group((A, B), "priority")))
    assert names(plan(route, CIRCUIT, max_attempts=10)) == ["a/m", "b/m"]


def test_failover_only_deployments_are_planned_only_when_nothing_else_is_healthy() -> None:
    spare1 = Deployment("s1/m", "s1", "m", adapter=None, timeout=60.0, health=Health(),  # type: ignore[arg-type]
                        failover_only=True)
    spare2 = Deployment("s2/m", "s2", "m", adapter=None, timeout=60.0, health=Health(),  # type: ignore[arg-type]
                        failover_only=True)
    route = Route("m", (Group((spare1, A, spare2), "priority"),))
    assert names(plan(route, CIRCUIT, max_attempts=10)) == ["a/m"]
    down = dep("a/m", open_for=30)
    route = Route("m", (Group((spare1, down, spare2), "priority"),))
    assert names(plan(route, CIRCUIT, max_attempts=10)) == ["s1/m", "s2/m"]
    assert names(plan(route, CIRCUIT, max_attempts=1)) == ["s1/m"]


def test_a_deployment_whose_region_is_down_gives_the_minimum_retry_after() -> None:
    region_down = Deployment("a/m", "a", "m", adapter=None, timeout=60.0,  # type: ignore[arg-type]
                             health=Health(open_until=math.inf, last_error="region down"))
    with pytest.raises(NoHealthyDeploymentError) as info:
        plan(Route("m", (Group((region_down,)),)), CIRCUIT, max_attempts=4)
    assert info.value.retry_after == 1.0  # no end known: the least a client is told to wait


def test_local_first_puts_local_deployments_first() -> None:
    local = Deployment("l/m", "l", "m", adapter=None, timeout=60.0, health=Health(),  # type: ignore[arg-type]
                       local=True)
    group = Group((A, B, local), "local_first")
    assert {tuple(names(order(group))) for _ in range(20)} == {("l/m", "a/m", "b/m")}  # never shuffled


def test_least_busy_counts_what_each_engine_reports_against_the_gates_limit() -> None:
    gated, open_ = dep("a/m"), dep("b/m")  # nothing in flight from this gateway
    gated.gate = Gate(2, max_queue=0)  # the gate's limit, not the engine's 8 slots, is its capacity
    gated.engine = SimpleNamespace(busy=lambda: 2, slots=8, kv=None)  # type: ignore[assignment]  # 2/2
    open_.engine = SimpleNamespace(busy=lambda: 1, slots=2, kv=None)  # type: ignore[assignment]  # 1/2
    assert {tuple(names(order(Group((gated, open_), "least_busy")))) for _ in range(2)} == {("b/m", "a/m")}


def local(key: str, *, inflight: int = 0, capacity: int | None = 4, engine_busy: int | None = None) -> Deployment:
    found = Deployment(key, key.partition("/")[0], "m", adapter=None, timeout=60.0,  # type: ignore[arg-type]
                       health=Health(inflight=inflight), local=True, capacity=capacity)
    if engine_busy is not None:
        found.engine = SimpleNamespace(busy=lambda: engine_busy)  # type: ignore[assignment]
    return found


def test_local_first_sends_a_local_deployment_last_from_prefer_local_under_of_its_capacity() -> None:
    quiet, at_half, engine_full = local("q/m", inflight=1), local("h/m", inflight=2), local("e/m", engine_busy=3)
    unbounded = local("u/m", inflight=50, capacity=None)  # no capacity: never busy
    group = Group((A, at_half, quiet, engine_full, unbounded), "local_first", prefer_local_under=0.5)
    # 1 of 4 is under 0.5 × 4; 2 of 4 is not; the engine's own 3 running count although this gateway sent none
    assert names(balancer.local_first(group)) == ["q/m", "u/m", "a/m", "h/m", "e/m"]


def test_the_routing_header_says_why_the_cloud_went_first() -> None:
    here, busy = local("l/m"), local("b/m", inflight=4)
    first = Route("m", (Group((A, here), "local_first"),))
    assert balancer.local_first_decision(first, [here, A]) == "local"
    assert balancer.local_first_decision(first, [A]) == "cloud (local failing)"
    assert balancer.local_first_decision(Route("m", (Group((A, busy), "local_first"),)), [A, busy]) == \
        "cloud (local over prefer_local_under)"
    assert balancer.local_first_decision(Route("m", (Group((A, B), "local_first"),)), [A, B]) == \
        "cloud (no local deployment)"


def test_the_routing_header_is_only_for_local_first_routes_with_a_plan() -> None:
    here = local("l/m")
    assert balancer.local_first_decision(Route("m", (Group((here, A), "priority"),)), [here, A]) is None
    assert balancer.local_first_decision(Route("m", (Group((here, A), "local_first"),)), []) is None
    assert balancer.local_first_decision(Route("m", ()), []) is None
