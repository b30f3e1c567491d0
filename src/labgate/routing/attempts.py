"""The one loop over candidates: try each deployment until one answers.

Every :class:`UpstreamError` moves on to the next candidate, bounded by the
request's total deadline: the transient ones (connection, timeout, 5xx, 429,
malformed body) and an upstream's 401/403/404, which refuses *this
deployment* (its key, its model) while another may serve the same request.
An upstream that rejects the request itself (any other 4xx) stops the loop
at once: the same body fails everywhere. When every attempt failed,
:class:`AllAttemptsFailedError` holds each cause and decides whether the
client may retry.
"""

from __future__ import annotations

import time
from typing import Any

from labgate.errors import (
    AllAttemptsFailedError,
    AttemptFailure,
    UnsupportedEndpointError,
    UpstreamError,
    UpstreamTimeoutError,
)
from labgate.providers.base import Call, Endpoint, Reply, Stream
from labgate.record import RequestRecord
from labgate.routing.circuit import Circuit
from labgate.routing.table import Deployment


async def attempt(candidates: list[Deployment], *, endpoint: Endpoint, body: dict[str, Any],
                  stream: bool, deadline: float, circuit: Circuit, record: RequestRecord,
                  native: dict[str, Any] | None = None) -> tuple[Reply | Stream, Deployment]:
    """The first successful answer and the deployment that gave it (``native``: see :class:`Call`)."""
    failures = record.failures
    for dep in candidates:
        if endpoint not in dep.adapter.endpoints:
            failures.append(AttemptFailure(dep.key, UnsupportedEndpointError(
                f"provider {dep.provider!r} does not serve {endpoint}")))
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            failures.append(AttemptFailure(dep.key, UpstreamTimeoutError(
                "the request's total deadline passed before this attempt")))
            break
        record.attempts += 1
        record.provider, record.deployment = dep.provider, dep.key
        call = Call(endpoint, body, dep.model, min(dep.timeout, remaining), record.request_id, native)
        dep.health.inflight += 1
        try:
            result = await (dep.adapter.stream(call) if stream else dep.adapter.send(call))
        except UpstreamError as exc:
            dep.health.inflight -= 1
            circuit.record_failure(dep.health, exc.message)
            failures.append(AttemptFailure(dep.key, exc))
            continue
        except BaseException:
            dep.health.inflight -= 1
            raise
        if not stream:
            dep.health.inflight -= 1  # a stream gives its slot back when it ends
        circuit.record_success(dep.health)
        return result, dep
    if failures and all(isinstance(f.error, UnsupportedEndpointError) for f in failures):
        raise failures[0].error
    raise AllAttemptsFailedError(failures)
