"""Tiers and regions: the best healthy tier takes the traffic; failover_only waits until it is needed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.contract.test_capacity import provider, rig

from labgate.testing import Behaviour, Simulator, Status

pytestmark = pytest.mark.timeout(30)
CIRCUIT = {"resilience": {"circuit": {"failure_threshold": 1, "cooldown_s": 0.3}}}


def tiers(primary: Simulator, backup: Simulator) -> dict[str, Any]:
    return {"west": provider(primary, priority=1, region="us-west-1"),
            "east": provider(backup, priority=2, region="us-east-1", failover_only=True)}


@pytest.mark.asyncio
async def test_failover_only_takes_traffic_only_while_the_primary_tier_is_down_and_gives_it_back() -> None:
    async with Simulator(Behaviour(), models=["m"]) as primary, Simulator(Behaviour(), models=["m"]) as backup, \
            rig(tiers(primary, backup), gateway=CIRCUIT) as r:
        served = [(await r.chat()).headers["x-labgate-deployment"]]
        primary.set(Behaviour(fault=Status(500)))
        failing = await r.chat()  # the primary was healthy when planned: no failover for this request
        served.append(f"{failing.status_code}")
        served.append((await r.chat()).headers["x-labgate-deployment"])  # its circuit is open: the backup
        primary.set(Behaviour())
        await asyncio.sleep(0.35)  # the cooldown ends: the next request probes the primary
        served += [(await r.chat()).headers["x-labgate-deployment"] for _ in range(2)]
        assert served == ["west/m", "502", "east/m", "west/m", "west/m"]
        assert len(backup.requests) == 1


@pytest.mark.asyncio
async def test_a_region_marked_down_moves_its_traffic_to_the_next_tier_and_back() -> None:
    async with Simulator(Behaviour(), models=["m"]) as primary, Simulator(Behaviour(), models=["m"]) as backup, \
            rig(tiers(primary, backup), gateway=CIRCUIT) as r:
        table = r.gateway.gateway.runtime.table
        assert table.mark_region("us-west-1", down=True) == ["west/m"]
        down = [(await r.chat()).headers["x-labgate-deployment"] for _ in range(2)]
        table.mark_region("us-west-1", down=False)
        up = [(await r.chat()).headers["x-labgate-deployment"] for _ in range(2)]
        assert (down, up) == (["east/m", "east/m"], ["west/m", "west/m"])


@pytest.mark.asyncio
async def test_every_region_down_is_a_503_with_retry_after() -> None:
    async with Simulator(Behaviour(), models=["m"]) as primary, Simulator(Behaviour(), models=["m"]) as backup, \
            rig(tiers(primary, backup), gateway=CIRCUIT) as r:
        table = r.gateway.gateway.runtime.table
        table.mark_region("us-west-1", down=True)
        table.mark_region("us-east-1", down=True)
        answer = await r.chat()
        assert (answer.status_code, answer.headers["retry-after"], answer.json()["error"]["code"]) == (
            503, "1", "no_healthy_deployment")
