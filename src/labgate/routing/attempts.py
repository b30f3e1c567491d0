"""The one loop over candidates: try each deployment until one answers.

Every :class:`UpstreamError` moves on to the next candidate, bounded by the
request's total deadline: the transient ones (connection, timeout, 5xx, 429,
malformed body) and an upstream's 401/403/404, which refuses *this
deployment* (its key, its model) while another may serve the same request.
An upstream that rejects the request itself (any other 4xx) stops the loop
at once: the same body fails everywhere. When every attempt failed,
:class:`AllAttemptsFailedError` holds each cause and decides whether the
client may retry.

Busy is not broken. A deployment whose gate is full (``max_parallel_requests``,
or its ``prefer_local_under`` share of it) is passed over without waiting and without an attempt; one whose pooled
connections are all in use (:class:`DeploymentBusyError`) is recorded as a
failed attempt but never counted by the circuit breaker. When the other
candidates are used up, the request waits in the priority queue
(:mod:`labgate.routing.queue`) for the first of the busy ones to free a slot.

Over its provider's limits is busy too. With a limiter, an attempt on a provider
that sets ``rate_limits`` or ``budget`` (providers.yaml) first takes its charges
(:meth:`Limiter.take_provider`: one atomic take); a provider over them is passed
over without an attempt and without the circuit hearing of it. When every
candidate was over, the client gets 429 ``rate_limit_exceeded`` (or
``insufficient_quota`` when only budgets refused) with the soonest retry-after,
and nothing reached an upstream.

Each attempt takes a lease (``health.inflight``, and a slot of the gate if
any) that :meth:`Deployment.release` gives back: here for a whole reply or a
failure, at the relay's end for a stream.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from labgate.errors import (
    AllAttemptsFailedError,
    AttemptFailure,
    DeploymentBusyError,
    NoHealthyDeploymentError,
    ProviderLimitedError,
    UnsupportedEndpointError,
    UpstreamError,
    UpstreamTimeoutError,
)
from labgate.providers.base import Call, Endpoint, Reply, Stream
from labgate.record import RequestRecord
from labgate.routing.circuit import Circuit
from labgate.routing.pace import Pace, Timeouts, first_token
from labgate.routing.table import Deployment

_new_call = tuple.__new__

if TYPE_CHECKING:
    from labgate.routing.queue import Queue
    from labgate.state.limits import Limiter


async def attempt(candidates: list[Deployment], *, endpoint: Endpoint, body: dict[str, Any],
                  stream: bool, deadline: float, circuit: Circuit, record: RequestRecord,
                  native: dict[str, Any] | None = None, queue: Queue | None = None,
                  limits: Limiter | None = None, max_attempts: int | None = None,
                  pace: Pace | None = None) -> tuple[Reply | Stream, Deployment]:
    """The first successful answer and the deployment that gave it (``native``: see :class:`Call`).

    ``limits``: the limiter whose provider limits each attempt takes (None, or no provider limited: nothing).
    ``max_attempts``: candidates to use at most (None: all of them); one passed over because its provider
    is over its limits uses none (the gateway then plans every candidate: :func:`planned`).
    ``pace``: stream deadlines (routing/pace.py): a stream without a token in time fails its attempt.
    """
    if limits is not None and not limits.providers:
        limits = None
    timeouts = pace.of_model(record.model) if pace is not None and stream else None
    failures = record.failures
    busy: list[Deployment] = []
    left = len(candidates) if max_attempts is None else max_attempts
    for dep in candidates:
        if left <= 0:
            break
        left -= 1
        if endpoint not in dep.adapter.endpoints:
            failures.append(AttemptFailure(dep.key, UnsupportedEndpointError(
                f"provider {dep.provider!r} does not serve {endpoint}")))
            continue
        gate = dep.gate
        if gate is not None and not (gate.try_prefer() if gate.shared is None else await gate.take_shared(prefer=True)):
            busy.append(dep)  # full (or over prefer_local_under): try the others first, then it, then queue
            if gate.shared is not None:  # counted across replicas: this replica's count is not the engine's
                if gate.spill_at < gate.limit and not gate.waiting:
                    record.spill = f"{dep.key} at or over prefer_local_under of {gate.limit} across replicas"
            elif gate.inflight < gate.limit:
                record.spill = f"{dep.key} at {gate.inflight}/{gate.limit} in flight (prefer_local_under)"
            continue
        now = time.monotonic()
        if deadline <= now:
            if gate is not None:
                gate.release()
            _out_of_time(record, dep)
            break
        result = await (_send(dep, endpoint, body, stream, deadline - now, now, circuit, record, native, timeouts)
                        if limits is None or dep.provider not in limits.providers else
                        _limited(dep, endpoint, body, stream, deadline, circuit, record, native, limits, timeouts))
        if result is not None:
            if record.routing == "local" and not dep.local:  # local_first planned a local one; the cloud answered
                _cloud_answered(record)
            return result, dep
        if limits is not None and isinstance(failures[-1].error, ProviderLimitedError):
            left += 1  # passed over, never sent: its provider's limit does not use one of max_attempts
    while busy and queue is not None and deadline > time.monotonic():
        # nothing else answered: a slot under the hard limit, else the first one freed, in priority order
        free = await _free(busy)
        dep = free if free is not None else await queue.wait(busy, record, deadline)  # holds a slot from here
        busy.remove(dep)
        record.spill = None
        now = time.monotonic()
        if deadline <= now:  # the wait used the rest of the time
            if dep.gate is not None:
                dep.gate.release()
            _out_of_time(record, dep)
            break
        result = await (_send(dep, endpoint, body, stream, deadline - now, now, circuit, record, native, timeouts)
                        if limits is None or dep.provider not in limits.providers else
                        _limited(dep, endpoint, body, stream, deadline, circuit, record, native, limits, timeouts))
        if result is not None:
            if record.routing == "local" and not dep.local:  # local_first planned a local one; the cloud answered
                _cloud_answered(record)
            return result, dep
    for dep in busy:
        failures.append(AttemptFailure(dep.key, DeploymentBusyError(
            f"provider {dep.provider!r} is at its max_parallel_requests")))
    if failures and all(isinstance(f.error, UnsupportedEndpointError) for f in failures):
        raise failures[0].error
    tried = [f.error for f in failures if not isinstance(f.error, UnsupportedEndpointError)]
    if tried and all(isinstance(e, ProviderLimitedError) for e in tried):  # nothing reached an upstream
        raise ProviderLimitedError.refusal(tried)  # type: ignore[arg-type]
    raise AllAttemptsFailedError(failures)


async def _free(busy: list[Deployment]) -> Deployment | None:
    """A busy candidate with a slot under its hard limit now (its lease taken, when shared), if any."""
    for dep in busy:
        gate = dep.gate
        if gate is not None and (gate.try_acquire() if gate.shared is None else await gate.take_shared(prefer=False)):
            return dep
    return None


UNCAPPED = 1 << 30  # plan every candidate: the attempt loop applies max_attempts itself


def planned(max_attempts: int, limits: Limiter | None) -> int:
    """How many candidates to plan: ``max_attempts``, or all of them when some provider has limits (one over
    its limits is passed over without using an attempt, so the loop may need a candidate past the cap)."""
    return max_attempts if limits is None or not limits.providers else UNCAPPED


def _cloud_answered(record: RequestRecord) -> None:
    """``x-labgate-routing`` when local_first planned a local deployment and the cloud answered: why."""
    over = any(isinstance(f.error, ProviderLimitedError) for f in record.failures)
    record.routing = "cloud (local over its provider limit)" if over else "cloud (local failing)"


async def _limited(dep: Deployment, endpoint: Endpoint, body: dict[str, Any], stream: bool, deadline: float,
                   circuit: Circuit, record: RequestRecord, native: dict[str, Any] | None,
                   limits: Limiter, timeouts: Timeouts | None) -> Reply | Stream | None:
    """An attempt within its provider's limit (state/limits.py): taken first, kept once sent, else given back.

    (Only for a provider with limits: ``attempt`` calls :func:`_send` directly otherwise, with no
    coroutine layer for the check.)"""
    held = await limits.take_provider(record, dep)
    if isinstance(held, ProviderLimitedError):  # over its provider's limit: passed over, like a busy one
        if dep.gate is not None:
            dep.gate.release()
        record.failures.append(AttemptFailure(dep.key, held))
        return None
    before = record.attempts  # counts the calls that reached (or were sent to) an upstream
    now = time.monotonic()
    try:
        result = await _send(dep, endpoint, body, stream, deadline - now, now, circuit, record, native, timeouts)
    except BaseException:
        limits.give_back(held, sent=record.attempts > before)
        raise
    if result is None:
        limits.give_back(held, sent=record.attempts > before)
    else:
        limits.keep(record, held)
    return result


async def _send(dep: Deployment, endpoint: Endpoint, body: dict[str, Any], stream: bool, remaining: float,
                now: float, circuit: Circuit, record: RequestRecord,
                native: dict[str, Any] | None, timeouts: Timeouts | None = None) -> Reply | Stream | None:
    """One call to ``dep``'s upstream with ``remaining`` seconds of the request's deadline at ``now``.

    ``timeouts``: a stream is handed on only once its first token came in time (routing/pace.py).
    """
    health = dep.health
    if health.failures and not circuit.claim(health, now):  # its half-open probe went to another request
        if dep.gate is not None:
            dep.gate.release()
        record.failures.append(AttemptFailure(dep.key, NoHealthyDeploymentError(
            f"{dep.key} is cooling down: another request is probing it", retry_after=1.0)))
        return None
    record.attempts += 1
    record.provider, record.deployment = dep.provider, dep.key
    trace = record.trace
    context = b"" if trace is None else trace.start_attempt(dep.key)  # traceparent header for the upstream
    # a named tuple built without its Python-level __new__ (one frame less per attempt)
    call = _new_call(Call, (endpoint, body, dep.model, min(dep.timeout, remaining), record.request_id, native,
                            context))
    health.inflight += 1
    try:
        if not stream:
            result: Reply | Stream = await dep.adapter.send(call)
        elif timeouts is None:
            result = await dep.adapter.stream(call)
        else:
            result = await first_token(dep.adapter.stream(call), timeouts, started=now, where=dep.key)
    except DeploymentBusyError as exc:  # busy, not broken: the circuit never hears of it
        dep.release()
        record.failures.append(AttemptFailure(dep.key, exc))
        if trace is not None:
            trace.end_attempt(exc)
        return None
    except UpstreamError as exc:
        dep.release()
        circuit.record_failure(health, exc.message)
        record.failures.append(AttemptFailure(dep.key, exc))
        if trace is not None:
            trace.end_attempt(exc)
        return None
    except BaseException as exc:
        dep.release()
        if trace is not None:
            trace.end_attempt(exc)
        raise
    if trace is not None:
        trace.end_attempt(None)
    if not stream:  # dep.release(), without its frame; a stream gives its lease back when the relay ends
        health.inflight -= 1
        if dep.gate is not None:
            dep.gate.release()
    if health.failures:  # nothing to reset on a closed circuit (open_until is set only after failures)
        circuit.record_success(health)
    return result


def _out_of_time(record: RequestRecord, dep: Deployment) -> None:
    record.failures.append(AttemptFailure(dep.key, UpstreamTimeoutError(
        "the request's total deadline passed before this attempt")))
