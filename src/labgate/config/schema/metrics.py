"""``gateway.yaml`` ``metrics:``: the Prometheus endpoint, ``GET /metrics``."""

from __future__ import annotations

from labgate.config.schema.base import Strict


class MetricsConfig(Strict):
    """Whether ``/metrics`` exists, and who may read it.

    ``enabled: false`` removes the route (404, like any unknown path) and the
    counting behind it; it takes effect at restart. ``require_key`` asks for
    the master key, as the admin API does (without a master key configured:
    loopback clients only); a reload applies it at once.
    """

    enabled: bool = True
    require_key: bool = False
