"""``gateway.yaml`` ``queue:``: how requests wait when every candidate deployment is at capacity.

Only used where a provider sets ``max_parallel_requests`` (see ``docs/reliability.md``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labgate.config.schema.base import Strict

Priority = Literal["critical", "high", "normal", "low"]


class QueueConfig(Strict):
    max_queue_size: int = Field(default=256, ge=0)  # waiting per provider, unless its max_queue says; 0: reject
    timeout_s: float = Field(default=30.0, gt=0)  # the longest a request waits for a slot: then 503 queue_timeout
    overflow_status: Literal[429, 503] = 429  # what a request gets when the line is full (queue_full)
    retry_after_s: float = Field(default=1.0, gt=0)  # the retry-after sent with queue_full / queue_timeout
    default_priority: Priority = "normal"
    routes: dict[str, Priority] = Field(default_factory=dict)  # requested model → its priority
    # with state.url: max_parallel_requests counted across replicas through leases in Redis (reliability.md)
    shared: bool = True
    namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")  # labgate:capacity:{namespace}:…
    lease_ttl_s: float = Field(default=10.0, gt=0, le=3600)  # a crashed replica's slots free after this
    shared_poll_s: float = Field(default=0.05, gt=0, le=10)  # how often a waiting replica asks Redis for a slot
    # a virtual key's tags → its priority (its project's first, then its team's); the header may lower it only
    projects: dict[str, Priority] = Field(default_factory=dict)
    teams: dict[str, Priority] = Field(default_factory=dict)
