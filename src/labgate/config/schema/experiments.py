"""``experiments.yaml``: A/B experiments — which requests, which variants, which weights, what to measure.

The file the seeds call ``config/experiments.yaml`` (docs/experiments.md)::

    experiments:
      - name: code-gen-quality
        status: running            # draft | running | paused | stopped ("active" is read as running)
        start_date: 2025-10-21     # inclusive (UTC); a date or a date-time
        end_date: 2025-11-21       # inclusive: a date runs to the end of that day
        model: code-model          # the requested name(s) it applies to; default: the variants' models
        unit: user                 # user | key | request | header:<name>
        variants:
          - {name: qwen-awq, model: qwen-coder-vllm, weight: 50}
          - {name: llama-base, model: "ollama/llama3.1:8b", weight: 50, parameters: {temperature: 0.2}}
        routing_rule: {match: {tags: [code-generation]}, sample_rate: 0.1}
        metrics: [latency_p95, tokens_per_second, user_satisfaction, cost_per_request]
        primary_metric: latency_p95

Cross-file checks (``config/checks.py``) resolve every model a variant names.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from labgate.config.schema.base import Strict

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # shown in headers and metric labels
HEADER = re.compile(r"[A-Za-z0-9-]{1,64}")
# metric name → what docs/experiments.md calls it; every metric is computed, these are the ones reported first
METRICS = ("latency_p50", "latency_p95", "ttft_p50", "tokens_per_second", "error_rate", "cost_per_request",
           "user_satisfaction", "thumbs_up_rate", "preference_rate")
PARAMETERS = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "presence_penalty",
                        "frequency_penalty", "seed", "stop"})  # what a variant may override in the body
MAX_VARIANTS = 16
MAX_EXPERIMENTS = 256
MAX_SYSTEM_PROMPT = 32_000


def _check_name(value: str) -> str:
    if not NAME.fullmatch(value):
        raise ValueError("use 1 to 64 letters, digits, `_`, `-` or `.`, starting with a letter or digit")
    return value


class VariantConfig(Strict):
    name: str
    # the route target: a model name (routed as usual) or provider/model; None: the requested model
    model: str | None = None
    weight: float = Field(default=1.0, ge=0, le=1_000_000)
    parameters: dict[str, Any] = Field(default_factory=dict)  # body overrides, e.g. {temperature: 0.2}
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT)  # replaces/sets the system message

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - PARAMETERS)
        if unknown:
            raise ValueError(f"a variant cannot override {unknown[0]!r}; it may set {', '.join(sorted(PARAMETERS))}")
        return value


class MatchConfig(Strict):
    tags: tuple[str, ...] = ()  # every tag listed must be on the request (x-labgate-tags, or the key's tags)


class RoutingRuleConfig(Strict):
    match: MatchConfig = Field(default_factory=MatchConfig)
    sample_rate: float = Field(default=1.0, ge=0, le=1)  # the share of matching units enrolled (sticky)


class ThompsonConfig(Strict):
    """Adaptive allocation (off by default): weights follow the posterior chance each variant is best."""

    enabled: bool = False
    min_share: float = Field(default=0.05, ge=0, le=0.5)  # every variant keeps at least this share
    stop_when_best: float = Field(default=0.95, gt=0.5, lt=1)  # stopping rule: P(best) at or over this


class ExperimentConfig(Strict):
    name: str
    description: str = ""
    status: Literal["draft", "running", "paused", "stopped"] = "draft"
    start_date: dt.datetime | dt.date | None = None
    end_date: dt.datetime | dt.date | None = None
    model: tuple[str, ...] = ()  # requested names it applies to ("*": any); empty: the variants' models
    unit: str = "user"
    salt: str | None = None  # the hash salt; default: the name (a new salt re-buckets every unit)
    variants: tuple[VariantConfig, ...] = Field(min_length=2, max_length=MAX_VARIANTS)
    control: str | None = None  # the variant the others are compared with; default: the first
    routing_rule: RoutingRuleConfig = Field(default_factory=RoutingRuleConfig)
    metrics: tuple[str, ...] = ("latency_p95", "error_rate", "user_satisfaction", "cost_per_request")
    primary_metric: str | None = None  # default: the first of metrics
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    minimum_effect: float = Field(default=0.05, gt=0, lt=10)  # the relative change worth detecting (power)
    adaptive: ThompsonConfig = Field(default_factory=ThompsonConfig)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> object:
        return "running" if value == "active" else value  # the seeds' word

    @field_validator("start_date", "end_date", mode="before")
    @classmethod
    def _day(cls, value: object) -> object:
        # "2025-11-21" (quoted, as in the seeds) is a day like 2025-11-21 unquoted: the end day is included
        if isinstance(value, str) and len(value.strip()) == 10:
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                return value
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _models(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str) -> str:
        head, sep, tail = value.partition(":")
        if value in ("user", "key", "request") or (head == "header" and sep and HEADER.fullmatch(tail)):
            return value.lower()
        raise ValueError("the unit of assignment is one of user, key, request or header:<name> "
                         "(e.g. header:x-session-id)")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r}; one of {', '.join(METRICS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique; {sorted({n for n in names if names.count(n) > 1})}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control {self.control!r} is not a variant; one of {', '.join(names)}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("at least one variant needs a weight above 0")
        if self.primary_metric is not None and self.primary_metric not in METRICS:
            raise ValueError(f"unknown primary_metric {self.primary_metric!r}; one of {', '.join(METRICS)}")
        if self.start_date and self.end_date and _instant(self.end_date, end=True) <= _instant(self.start_date):
            raise ValueError("end_date must come after start_date")
        if not self.model and any(v.model is None for v in self.variants):
            raise ValueError("`model` is required when a variant has no model of its own (a parameter override)")
        return self

    @property
    def control_name(self) -> str:
        return self.control or self.variants[0].name

    @property
    def primary(self) -> str:
        return self.primary_metric or (self.metrics[0] if self.metrics else "latency_p95")

    @property
    def covers(self) -> tuple[str, ...]:
        """The requested model names the experiment applies to."""
        return self.model or tuple(dict.fromkeys(v.model for v in self.variants if v.model is not None))

    def window(self) -> tuple[float | None, float | None]:
        """Start and end as Unix seconds (UTC; a date's end is the end of that day)."""
        start = None if self.start_date is None else _instant(self.start_date).timestamp()
        end = None if self.end_date is None else _instant(self.end_date, end=True).timestamp()
        return start, end


def _instant(value: dt.datetime | dt.date, *, end: bool = False) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    day = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    return day + dt.timedelta(days=1) if end else day


class ExperimentsConfig(Strict):
    experiments: tuple[ExperimentConfig, ...] = Field(default=(), max_length=MAX_EXPERIMENTS)

    @model_validator(mode="after")
    def _unique(self) -> ExperimentsConfig:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names must be unique; {sorted({n for n in names if names.count(n) > 1})}")
        return self
