"""State that outlives one request: a small protocol per kind, an in-process and a Redis backend.

Each kind of state gets its own small protocol in :mod:`labgate.state.base`
(today: :class:`~labgate.state.base.EntryStore`, the cache's entries; the
keys/limits/budgets feature adds counters and reservations beside it). Each
protocol has two backends: in-process (:mod:`labgate.state.memory`, the
embedded default: no services needed) and Redis (:mod:`labgate.state.redis`:
shared by every replica; one round trip per operation). Which one is chosen
by ``state.url`` in ``gateway.yaml`` (a feature may name its own ``url``).

A backend translates its client's exceptions into
:class:`~labgate.state.base.StateUnavailableError` at its own boundary, so a
feature can fail open (serve without the state) without knowing the client.
Features (``state/cache.py``, ...) are built into the ``Runtime`` at load and
are ``None`` there when not configured.
"""
