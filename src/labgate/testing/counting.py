"""A simulator that records how many requests it ever served at once (capacity tests and benchmarks)."""

from __future__ import annotations

from typing import Any

from labgate.testing.simulator import Simulator


class CountingSimulator(Simulator):
    """:class:`Simulator` plus ``now`` (requests being served) and ``peak`` (the most ever at once)."""

    peak = 0
    now = 0

    async def _serve(self, request: Any, endpoint: Any) -> Any:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await super()._serve(request, endpoint)
        finally:
            self.now -= 1
