"""Prometheus metrics: counted on the request path in plain dicts, rendered only when scraped.

:meth:`Metrics.observe` runs once per finished request (from ``Gateway.finish``)
and only adds numbers: three dictionary lookups find the request's series
(model → provider → endpoint), then counters are incremented and each
histogram takes one ``bisect`` into fixed bucket bounds. Text is made by
:meth:`Metrics.render` only when ``GET /metrics`` asks for it (text exposition
format 0.0.4); per-(model, provider) metrics are summed over endpoints then.

Label values are bounded, so clients cannot grow memory by inventing names:

- ``model`` is the name the client sent only when it was routed to a provider
  (``record.provider`` is set); otherwise ``""``. Provider/model pairs and
  pattern routes still let a client choose names on a routed provider, so at
  most :data:`MAX_LABEL_VALUES` distinct models get their own label; later
  ones are counted under :data:`OVERFLOW` (and not remembered). Deployments
  (``provider/model``, in failure counts) have the same cap.
- ``provider`` comes from the config; ``endpoint`` and the failure ``error``
  codes are fixed sets; ``status`` is the HTTP status code sent.

One ``Metrics`` lives as long as the process (a config reload keeps its counts).
With several workers each process counts its own requests; a scrape adds up the
whole group's through :mod:`labgate.telemetry.group`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from labgate.config.schema.metrics import MetricsConfig
from labgate.record import RequestRecord
from labgate.telemetry.budgets import BudgetGauges
from labgate.telemetry.group import WorkerGroup

# Seconds. LLM calls range from a cached embedding (milliseconds) to a long generation (minutes).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
MAX_LABEL_VALUES = 1000  # distinct models (and deployments) with their own series; the rest share OVERFLOW
OVERFLOW = "(other)"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BOUNDS = [*(repr(b) for b in BUCKETS), "+Inf"]


class _Series:
    """What one ``(model, provider, endpoint)`` has counted. Histograms are lists: the count per
    bucket (not cumulative), the count above the last bound, then the sum."""

    __slots__ = ("completion", "cost", "durations", "prompt", "statuses", "stream_errors", "ttft")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}  # HTTP status sent -> requests
        self.stream_errors = 0
        self.durations: list[float] = [0] * (len(BUCKETS) + 2)
        self.ttft: list[float] = [0] * (len(BUCKETS) + 2)
        self.prompt = 0
        self.completion = 0
        self.cost = 0.0  # USD (cost.py): priced requests only


Endpoints = dict[str, _Series]
Providers = dict[str, Endpoints]


class Metrics:
    """The process's request counters and histograms; ``render()`` gives the Prometheus text."""

    __slots__ = ("_cache", "_deployments", "_failures", "_labels", "_models", "_queued", "_unrouted", "_variants",
                 "budgets", "capacity", "group", "in_flight", "refused", "started", "version")

    def __init__(self) -> None:
        # model label -> provider -> endpoint -> series; "" for requests that were not routed
        self._labels: dict[str, Providers] = {}
        self._unrouted = self._labels[""] = {}
        self._models: dict[str, Providers] = {}  # a routed name a client sent -> its label's entry
        self._failures: dict[tuple[str, str], int] = {}  # (deployment label, error code) -> attempts
        self._deployments: dict[str, str] = {}  # a deployment -> its label value
        self.in_flight: Callable[[], int] | None = None  # set by the server: requests being answered
        # set by the server when providers have max_parallel_requests: (provider, in flight, limit, waiting)
        self.capacity: Callable[[], list[tuple[str, int, int, int]]] | None = None
        self._queued: list[float] = [0] * len(BUCKETS) + [0, 0.0]  # time requests waited for capacity (buckets, sum)
        self.started = time.time()
        self.version = _version()
        # the response cache: status -> requests, and bytes / saved tokens (docs/cache.md)
        self._cache: dict[str, int] = {}
        # requests refused before any surface, by error code (host_not_allowed, route_not_found, ...)
        self.refused: dict[str, int] = {}
        self.group: WorkerGroup | None = None  # set under --workers N: a scrape adds the siblings' counts
        self.budgets = BudgetGauges()  # spend against budgets, read per scrape (telemetry/budgets.py)
        # A/B experiments (docs/experiments.md): (experiment, variant) -> [errors, duration buckets..., sum];
        # names come from experiments.yaml, at most MAX_LABEL_VALUES pairs
        self._variants: dict[tuple[str, str], list[float]] = {}

    @classmethod
    def from_config(cls, config: MetricsConfig) -> Metrics | None:
        """The metrics ``metrics:`` asks for, or None for ``enabled: false`` (nothing is counted)."""
        return cls() if config.enabled else None

    # --- the request path ----------------------------------------------------

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request (``Gateway.finish`` calls it once the record is closed)."""
        provider = record.provider
        if provider is None:  # not routed: whatever model name was sent, it gets no series of its own
            providers, provider = self._unrouted, ""
        else:
            model = record.model or ""
            found = self._models.get(model)
            providers = self._model(model) if found is None else found
        endpoints = providers.get(provider)
        if endpoints is None:
            endpoints = providers[provider] = {}
        series = endpoints.get(record.endpoint)
        if series is None:
            series = endpoints[record.endpoint] = _Series()

        statuses, status = series.statuses, record.status
        statuses[status] = statuses.get(status, 0) + 1
        started, finished = record.started, record.finished
        assert finished is not None  # Gateway.finish closes the record before the sinks see it
        seconds = finished - started
        hist = series.durations
        hist[bisect_left(BUCKETS, seconds)] += 1
        hist[-1] += seconds
        if record.stream:
            if record.outcome == "stream_error":
                series.stream_errors += 1
            first = record.first_token or record.first_byte
            if first is not None:
                seconds = first - started
                hist = series.ttft
                hist[bisect_left(BUCKETS, seconds)] += 1
                hist[-1] += seconds
        usage = record.usage
        if usage is not None and not record.cache_hit:  # a hit's usage was saved, not used
            series.prompt += usage.prompt_tokens
            series.completion += usage.completion_tokens
        if record.cost:
            series.cost += record.cost
        if record.failures:
            self._count_failures(record)
        if record.queue_ms is not None:  # it waited in the capacity queue (routing/queue.py)
            seconds, hist = record.queue_ms / 1000, self._queued
            hist[bisect_left(BUCKETS, seconds)] += 1
            hist[-1] += seconds
        if record.cache_status is not None:
            self._count_cache(record)
        if record.variant is not None:
            self._count_variant(record, finished - started)

    def _count_variant(self, record: RequestRecord, seconds: float) -> None:
        key = (record.experiment or "", record.variant or "")
        counts = self._variants.get(key)
        if counts is None:
            if len(self._variants) >= MAX_LABEL_VALUES:
                return
            counts = self._variants[key] = [0] * (len(BUCKETS) + 3)
        counts[0] += record.outcome != "ok"
        counts[1 + bisect_left(BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def _count_cache(self, record: RequestRecord) -> None:
        counts, status, size = self._cache, record.cache_status or "", record.cache_bytes
        counts[status] = counts.get(status, 0) + 1
        if record.cache_hit:
            counts["bytes_served"] = counts.get("bytes_served", 0) + size
            usage = record.usage
            if usage is not None:
                counts["saved_prompt"] = counts.get("saved_prompt", 0) + usage.prompt_tokens
                counts["saved_completion"] = counts.get("saved_completion", 0) + usage.completion_tokens
        elif size:
            counts["bytes_stored"] = counts.get("bytes_stored", 0) + size

    def _model(self, name: str) -> Providers:
        """The first request routed under ``name``: its own label, or OVERFLOW once the cap is reached
        (then ``name`` is not remembered, so the names kept stay bounded too)."""
        if len(self._models) >= MAX_LABEL_VALUES:
            return self._labels.setdefault(OVERFLOW, {})
        providers = self._models[name] = self._labels.setdefault(name, {})
        return providers

    def _count_failures(self, record: RequestRecord) -> None:
        failures, labels = self._failures, self._deployments
        for failure in record.failures:
            deployment = labels.get(failure.deployment)
            if deployment is None:
                deployment = OVERFLOW
                if len(labels) < MAX_LABEL_VALUES:
                    deployment = labels[failure.deployment] = failure.deployment
            key = (deployment, failure.error.code or "")
            failures[key] = failures.get(key, 0) + 1

    # --- the scrape ------------------------------------------------------------

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format 0.0.4."""
        out: list[str] = []
        series = sorted(((model, provider, endpoint), s) for model, providers in self._labels.items()
                        for provider, endpoints in providers.items() for endpoint, s in endpoints.items())
        _header(out, "labgate_requests_total", "counter",
                "API requests finished, by the HTTP status sent (499: the client went away first).")
        for (model, provider, endpoint), s in series:
            for status, count in sorted(s.statuses.items()):
                labels = _labels(endpoint=endpoint, model=model, provider=provider, status=str(status))
                out.append(f"labgate_requests_total{labels} {count}")
        _header(out, "labgate_stream_errors_total", "counter",
                "Streams that failed after they started (sent as status 200, then an error event).")
        for (model, provider, endpoint), s in series:
            if s.stream_errors:
                labels = _labels(endpoint=endpoint, model=model, provider=provider)
                out.append(f"labgate_stream_errors_total{labels} {s.stream_errors}")
        _histogram(out, "labgate_request_duration_seconds", "Time from receiving an API request to its last byte.",
                   {_labels(endpoint=e, model=m, provider=p): s.durations for (m, p, e), s in series})
        # per (model, provider): the endpoints' series added up
        by_model: dict[tuple[str, str], list[_Series]] = {}
        for (model, provider, _), s in series:
            by_model.setdefault((model, provider), []).append(s)
        ttft = {_labels(model=m, provider=p): [sum(c) for c in zip(*(s.ttft for s in group), strict=True)]
                for (m, p), group in by_model.items()}
        _histogram(out, "labgate_time_to_first_token_seconds",
                   "Streams: time from receiving the request to the first content chunk.",
                   {labels: hist for labels, hist in ttft.items() if any(hist[:-1])})
        _header(out, "labgate_tokens_total", "counter", "Tokens the upstreams reported using.")
        for (model, provider), group in by_model.items():
            prompt, completion = sum(s.prompt for s in group), sum(s.completion for s in group)
            if model or provider:  # requests that were not routed used no tokens
                for kind, count in (("prompt", prompt), ("completion", completion)):
                    out.append(f"labgate_tokens_total{_labels(model=model, provider=provider, type=kind)} {count}")
        _header(out, "labgate_cost_usd_total", "counter", "What the requests cost in USD (docs/cost.md).")
        for (model, provider), group in by_model.items():
            if model or provider:
                out.append(f"labgate_cost_usd_total{_labels(model=model, provider=provider)} "
                           f"{sum(s.cost for s in group)!r}")
        _header(out, "labgate_upstream_failures_total", "counter",
                "Failed or skipped upstream attempts, by deployment and error code.")
        for (deployment, error), count in sorted(self._failures.items()):
            out.append(f"labgate_upstream_failures_total{_labels(deployment=deployment, error=error)} {count}")
        if self._cache:
            self._render_cache(out)
        if self.refused:
            _header(out, "labgate_refused_requests_total", "counter",
                    "Requests refused before reaching an API surface (wrong Host, foreign Origin, unknown route), "
                    "by error code.")
            out.extend(f"labgate_refused_requests_total{_labels(code=code)} {count}"
                       for code, count in sorted(self.refused.items()))
        if self._variants:
            self._render_variants(out)
        gates = None if self.capacity is None else self.capacity()
        if gates:  # only while some provider has max_parallel_requests
            self._render_capacity(out, gates)
        if self.in_flight is not None:
            _header(out, "labgate_requests_in_flight", "gauge",
                    "HTTP requests being answered now (streams included), this scrape not counted.")
            out.append(f"labgate_requests_in_flight {self.in_flight()}")
        _header(out, "labgate_build_info", "gauge", "The running labgate version (always 1).")
        out.append(f"labgate_build_info{_labels(version=self.version)} 1")
        _header(out, "labgate_start_time_seconds", "gauge", "Unix time this gateway process started serving.")
        out.append(f"labgate_start_time_seconds {self.started!r}")
        return "\n".join(out) + "\n"

    def _render_cache(self, out: list[str]) -> None:
        counts = self._cache
        _header(out, "labgate_cache_requests_total", "counter",
                "Requests by response-cache result (unavailable: the backend was down; served without it).")
        for status in ("hit", "miss", "bypass", "off", "unavailable"):
            out.append(f"labgate_cache_requests_total{_labels(result=status)} {counts.get(status, 0)}")
        _header(out, "labgate_cache_bytes_total", "counter", "Answer bytes served from the cache, and stored in it.")
        for kind in ("served", "stored"):
            out.append(f"labgate_cache_bytes_total{_labels(direction=kind)} {counts.get('bytes_' + kind, 0)}")
        _header(out, "labgate_cache_saved_tokens_total", "counter",
                "Tokens of the answers served from the cache: upstream usage saved.")
        for kind in ("prompt", "completion"):
            out.append(f"labgate_cache_saved_tokens_total{_labels(type=kind)} {counts.get('saved_' + kind, 0)}")

    def _render_variants(self, out: list[str]) -> None:
        variants = sorted(self._variants.items())
        _header(out, "labgate_experiment_errors_total", "counter",
                "Requests of an A/B experiment's variant that did not end ok (docs/experiments.md).")
        for (experiment, variant), counts in variants:
            out.append(f"labgate_experiment_errors_total{_labels(experiment=experiment, variant=variant)} "
                       f"{int(counts[0])}")
        _histogram(out, "labgate_experiment_request_duration_seconds",
                   "Time from request to last byte, per A/B experiment variant.",
                   {_labels(experiment=e, variant=v): counts[1:] for (e, v), counts in variants})

    def _render_capacity(self, out: list[str], gates: list[tuple[str, int, int, int]]) -> None:
        _header(out, "labgate_provider_in_flight", "gauge",
                "Requests in flight on a provider with max_parallel_requests (this worker).")
        out.extend(f"labgate_provider_in_flight{_labels(provider=p)} {n}" for p, n, _, _ in gates)
        _header(out, "labgate_provider_capacity", "gauge", "A provider's max_parallel_requests.")
        out.extend(f"labgate_provider_capacity{_labels(provider=p)} {limit}" for p, _, limit, _ in gates)
        _header(out, "labgate_queue_depth", "gauge", "Requests waiting for a provider's capacity now.")
        out.extend(f"labgate_queue_depth{_labels(provider=p)} {waiting}" for p, _, _, waiting in gates)
        _histogram(out, "labgate_queue_wait_seconds", "Time requests waited for capacity (those that waited).",
                   {"{}": self._queued})


def _header(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _histogram(out: list[str], name: str, help_text: str, series: dict[str, list[float]]) -> None:
    """``series``: rendered labels (``{a="b"}``) -> counts per bucket, above the last bound, and sum."""
    _header(out, name, "histogram", help_text)
    for labels, hist in series.items():
        inner = labels[1:-1] + "," if labels != "{}" else ""
        cumulative = 0
        for bound, count in zip(_BOUNDS, hist, strict=False):  # hist ends with the sum: not a bucket
            cumulative += int(count)
            out.append(f'{name}_bucket{{{inner}le="{bound}"}} {cumulative}')
        out.append(f"{name}_sum{labels} {float(hist[-1])!r}")
        out.append(f"{name}_count{labels} {cumulative}")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _version() -> str:
    try:
        return version("labgate")
    except PackageNotFoundError:
        return "unknown"

