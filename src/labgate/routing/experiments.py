"""Variant assignment for A/B experiments (``experiments.yaml``; docs/experiments.md).

Built into the Runtime at load (``None`` when no experiment is running or
scheduled: the request path pays one ``is None`` check). For a request whose
model an experiment covers, :meth:`Experiments.assign`:

1. skips it when the client opted out (``x-labgate-experiment: off``), the
   experiment is outside its date window, or the request lacks a tag the
   routing rule matches on (tags: ``x-labgate-tags``, plus ``project:NAME`` and
   ``team:NAME`` of a virtual key);
2. takes the unit of assignment (the user, a header such as ``x-session-id``,
   the key, or the request) and hashes it with the experiment's salt:
   ``sample_rate`` keeps a sticky share of units, then **weighted rendezvous
   hashing** picks the variant: each variant scores ``-ln(u_v) / w_v`` where
   ``u_v`` is a uniform number from (BLAKE2b of salt and unit) mixed with the
   variant's code (:func:`uniform`); the lowest score wins. The chance of a variant is exactly its weight's share;
   the same unit gets the same variant in every process and replica (no state,
   no ``PYTHONHASHSEED``); changing one variant's weight moves only units to
   or from that variant, in the amount its share changed;
3. routes the request to the variant's model and applies its overrides
   (parameters, system prompt), and names it on the record
   (``experiment``/``variant``: the history row, metrics labels, spans and
   the ``x-labgate-experiment: NAME/VARIANT`` response header).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labgate.config.schema.experiments import ExperimentConfig, ExperimentsConfig
from labgate.record import RequestRecord

OPT_OUT_HEADER = "x-labgate-experiment"  # "off": served by plain routing, never enrolled
TAGS_HEADER = "x-labgate-tags"  # comma-separated
USER_HEADER = "x-labgate-user"
MAX_UNIT_CHARS = 256  # a longer unit value is hashed by its first 256 characters
MAX_TAGS = 32
_TWO64 = float(2**64)
_MASK = 2**64 - 1
SAMPLE_LABEL = "\x00sample"  # not a variant name (names start with a letter or digit)


def uniform(salt: bytes, label: str, unit: str) -> float:
    """A number in (0, 1) fixed by (salt, label, unit): the same in every process."""
    return _draw(unit_hash(salt, unit), label_code(label))


def unit_hash(salt: bytes, unit: str) -> int:
    """64 bits of BLAKE2b over (salt, unit): one hash per request, whatever the number of variants."""
    return int.from_bytes(hashlib.blake2b(salt + unit.encode(), digest_size=8).digest(), "big")


def label_code(label: str) -> int:
    """A variant's (or the sample's) 64-bit code, computed at load."""
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8, person=b"labgate-variant").digest(), "big")


def _draw(unit: int, code: int) -> float:
    """SplitMix64's finaliser over (unit hash XOR label code): a strong 64-bit mixer, so each label's
    numbers are uniform and independent of every other label's."""
    x = unit ^ code
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return ((x ^ (x >> 31)) + 0.5) / _TWO64


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    label: str  # "EXPERIMENT/VARIANT": the response header's value
    model: str | None  # the route target; None: the requested model
    weight: float
    parameters: Mapping[str, Any]
    system_prompt: str | None
    code: int  # label_code(name): mixed with the unit's hash (see uniform)

    @property
    def changes_body(self) -> bool:
        return bool(self.parameters) or self.system_prompt is not None


@dataclass(frozen=True, slots=True)
class Experiment:
    """One running experiment, compiled for the request path."""

    name: str
    salt: bytes
    variants: tuple[Variant, ...]
    unit: str  # user | key | request | header
    header: str | None  # the unit's header (unit header:NAME)
    tags: frozenset[str]
    sample_rate: float
    start: float | None
    end: float | None
    sample_code: int  # label_code(SAMPLE_LABEL)

    @classmethod
    def of(cls, config: ExperimentConfig) -> Experiment:
        start, end = config.window()
        kind, _, header = config.unit.partition(":")
        salt = hashlib.blake2b((config.salt or config.name).encode(), digest_size=32).digest()
        return cls(config.name, salt,
                   tuple(Variant(v.name, f"{config.name}/{v.name}", v.model, v.weight, dict(v.parameters),
                                 v.system_prompt, label_code(v.name)) for v in config.variants),
                   kind, header or None, frozenset(config.routing_rule.match.tags),
                   config.routing_rule.sample_rate, start, end, label_code(SAMPLE_LABEL))

    def choose(self, unit: str) -> Variant | None:
        """The unit's variant, or None when the unit is outside the sample."""
        raw = unit_hash(self.salt, unit)
        if self.sample_rate < 1.0 and _draw(raw, self.sample_code) >= self.sample_rate:
            return None
        best, score = None, math.inf
        for variant in self.variants:
            if variant.weight > 0:
                s = -math.log(_draw(raw, variant.code)) / variant.weight
                if s < score:
                    best, score = variant, s
        return best

    def active(self, now: float) -> bool:
        return (self.start is None or now >= self.start) and (self.end is None or now < self.end)


class Experiments:
    """The running experiments by the model name they cover (``*``: any), in file order."""

    __slots__ = ("by_model", "experiments", "wildcard")

    def __init__(self, experiments: tuple[Experiment, ...], covers: Mapping[str, tuple[str, ...]]) -> None:
        self.experiments = experiments
        by_model: dict[str, list[Experiment]] = {}
        for experiment in experiments:
            for model in covers[experiment.name]:
                by_model.setdefault(model, []).append(experiment)
        self.wildcard = tuple(by_model.pop("*", ()))
        self.by_model = {m: (*found, *self.wildcard) for m, found in by_model.items()}

    @classmethod
    def build(cls, config: ExperimentsConfig) -> Experiments | None:
        """None unless some experiment is running and has not ended (a draft or paused one costs nothing)."""
        now = time.time()
        running = [e for e in config.experiments if e.status == "running"]
        compiled = tuple(Experiment.of(e) for e in running)
        compiled = tuple(e for e in compiled if e.end is None or e.end > now)
        if not compiled:
            return None
        return cls(compiled, {e.name: e.covers for e in running})

    def assign(self, record: RequestRecord, payload: dict[str, Any], native: dict[str, Any] | None,
               key: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Enrol the request in the first experiment that takes it: the body (and native body) to send."""
        found = self.by_model.get(record.model or "", self.wildcard)
        if not found:
            return payload, native
        headers: Mapping[str, str] = record.headers or {}
        opt_out = headers.get(OPT_OUT_HEADER)
        if opt_out is not None and opt_out.strip().lower() == "off":
            return payload, native
        tags: frozenset[str] | None = None
        now = record.timestamp
        for experiment in found:
            if (experiment.start is not None and now < experiment.start) or (
                    experiment.end is not None and now >= experiment.end):
                continue
            if experiment.tags:
                tags = request_tags(headers, key) if tags is None else tags
                if not experiment.tags <= tags:
                    continue
            variant = experiment.choose(unit_of(experiment, record, payload, headers))
            if variant is None:
                continue  # outside the sample: plain routing
            record.experiment, record.variant = experiment.name, variant.name
            if variant.model is not None:
                record.model = variant.model
            if variant.changes_body:
                payload, native = override(payload, variant), None  # the adapter translates the changed body
                record.payload = payload
            return payload, native
        return payload, native


def unit_of(experiment: Experiment, record: RequestRecord, payload: Mapping[str, Any],
            headers: Mapping[str, str]) -> str:
    """The value the experiment hashes: its unit when the request has one, else the key, else the request."""
    value: Any = None
    if experiment.unit == "user":
        value = payload.get("user") or headers.get(USER_HEADER)
        if not value and isinstance(metadata := payload.get("metadata"), dict):
            value = metadata.get("user_id")  # Anthropic's field
    elif experiment.unit == "header":
        value = headers.get(experiment.header or "")
    elif experiment.unit == "request":
        return record.request_id
    if isinstance(value, str) and value:
        return experiment.unit[0] + ":" + value[:MAX_UNIT_CHARS]
    if record.key_id is not None and experiment.unit != "request":
        return "k:" + record.key_id
    return record.request_id


def request_tags(headers: Mapping[str, str], key: Any) -> frozenset[str]:
    """``x-labgate-tags`` (comma-separated, at most :data:`MAX_TAGS`) plus the virtual key's project and team."""
    tags = [t.strip() for t in headers.get(TAGS_HEADER, "").split(",", MAX_TAGS)[:MAX_TAGS]]
    if key is not None:
        if key.project:
            tags.append("project:" + key.project)
        if key.team:
            tags.append("team:" + key.team)
    return frozenset(t for t in tags if t)


def override(payload: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """A copy of the body with the variant's parameters and system prompt (the client's body is not changed)."""
    body = {**payload, **variant.parameters}
    if variant.system_prompt is not None and isinstance(messages := body.get("messages"), list):
        rest = [m for m in messages if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))]
        body["messages"] = [{"role": "system", "content": variant.system_prompt}, *rest]
    return body
