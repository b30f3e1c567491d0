"""The line a request waits in when every candidate deployment is at capacity.

Built into the Runtime only when some provider sets ``max_parallel_requests``
(otherwise it is ``None`` and nothing here runs). A request waits at every
busy candidate's gate at once (:mod:`labgate.routing.gate`) and takes the
first slot any of them frees, in priority order (``critical`` before
``high`` before ``normal`` before ``low``), first come first served within a
priority. It waits at most ``queue.timeout_s`` (and never past the request's
own deadline); a full line is refused at once. A client that goes away
while waiting leaves the line at once (its task is cancelled), and a slot
handed to it in that instant is passed on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from labgate.config.schema.queue import QueueConfig
from labgate.errors import OverCapacityError, RequestError
from labgate.record import RequestRecord
from labgate.routing.gate import Gate, Waiter
from labgate.routing.table import Deployment

PRIORITIES: Mapping[str, int] = {"critical": 0, "high": 1, "normal": 2, "low": 3}
PRIORITY_HEADER = "x-labgate-priority"


@dataclass(frozen=True, slots=True)
class Queue:
    """Priorities, timeout and overflow answer of the line (``gateway.yaml`` ``queue:``)."""

    timeout: float
    overflow_status: int
    retry_after: float
    default_priority: int
    routes: Mapping[str, int] = field(default_factory=dict)
    projects: Mapping[str, int] = field(default_factory=dict)
    teams: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, config: QueueConfig) -> Queue:
        def ranks(names: Mapping[str, str]) -> dict[str, int]:
            return {name: PRIORITIES[p] for name, p in names.items()}
        return cls(config.timeout_s, config.overflow_status, config.retry_after_s,
                   PRIORITIES[config.default_priority], ranks(config.routes), ranks(config.projects),
                   ranks(config.teams))

    def priority(self, record: RequestRecord) -> int:
        """The request's priority (0 first).

        A virtual key whose project (else team) is in ``queue.projects`` (``queue.teams``) has that
        priority, and its ``x-labgate-priority`` header may only lower it: a key tagged ``low`` cannot
        jump the line by sending ``critical``. Otherwise: the header, else the requested model's entry
        in ``queue.routes``, else ``queue.default_priority``.
        """
        given, key = record.priority, record.api_key
        tagged = None
        if key is not None and (self.projects or self.teams):
            tagged = self.projects.get(key.project or "")
            if tagged is None:
                tagged = self.teams.get(key.team or "")
        if given is not None:
            found = PRIORITIES.get(given.strip().lower())
            if found is None:
                raise RequestError(f"The {PRIORITY_HEADER} header must be one of "
                                   f"{', '.join(PRIORITIES)}; got {given[:40]!r}.", param=PRIORITY_HEADER)
            return found if tagged is None else max(found, tagged)
        if tagged is not None:
            return tagged
        return self.routes.get(record.model or "", self.default_priority)

    async def wait(self, busy: list[Deployment], record: RequestRecord, deadline: float) -> Deployment:
        """Wait for a slot on any of ``busy``; returns the deployment whose slot this request now holds."""
        gates: list[Gate] = [d.gate for d in busy if d.gate is not None and d.gate.room()]
        closed = next((d.gate.closed for d in busy if d.gate is not None and d.gate.closed is not None), None)
        if closed is not None:  # the gateway is shutting down
            raise closed
        if not gates:
            raise OverCapacityError(
                f"Every deployment for model {record.model!r} is at capacity and its queue is full; "
                "retry later.", code="queue_full", status=self.overflow_status, retry_after=self.retry_after)
        waiter = Waiter(self.priority(record), gates)
        for gate in gates:
            if gate.shared is not None:  # slots other replicas free are found by polling Redis
                gate.shared.watch(gate)
        started, since = time.monotonic(), time.perf_counter()  # since: the span's clock (the record's)
        try:
            async with asyncio.timeout(max(min(self.timeout, deadline - started), 0.0)):
                await waiter.future
        except TimeoutError:
            if waiter.leave() is None:
                raise OverCapacityError(
                    f"No deployment for model {record.model!r} had capacity within "
                    f"{time.monotonic() - started:.1f} s of waiting; retry later.",
                    code="queue_timeout", status=503, retry_after=self.retry_after) from None
        except BaseException:
            handed = waiter.leave()
            if handed is not None:
                handed.release()  # handed over as the client left: pass it on
            raise
        else:
            waiter.leave()
        finally:
            record.queue_wait = (since, time.perf_counter())  # the "queue wait" span, however it ended
        gate = waiter.future.result()
        record.queue_ms = round((time.monotonic() - started) * 1000, 3)
        return next(d for d in busy if d.gate is gate)
