"""Read the Prometheus text exposition format (0.0.4) strictly, for tests of ``GET /metrics``.

    families = parse_metrics(text)
    families["labgate_requests_total"].samples['labgate_requests_total{endpoint="chat",...}']

Stricter than Prometheus itself, so that a test fails on what a scraper might
merely tolerate: every family has one ``# HELP`` and one ``# TYPE`` before its
samples; a family's samples are contiguous and unique; counters are named
``*_total`` and never negative; a histogram's buckets are cumulative, end with
``le="+Inf"`` and agree with its ``_count``; the text ends with a newline and
holds no blank lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_PAIR = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"({_NAME})(\{{(?:{_PAIR}(?:,{_PAIR})*)?\}})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_KINDS = ("counter", "gauge", "histogram", "summary", "untyped")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


@dataclass
class Family:
    """One metric: its type, help text, and samples (``name{labels}`` as written → value)."""

    kind: str
    help: str | None = None
    samples: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str) -> dict[str, Family]:
    """Every family in ``text`` by name; :class:`ValueError` names the first line that is wrong."""
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: str | None = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        try:
            current = _line(line, families, helps, current)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}: {line!r}") from None
    for name, family in families.items():
        family.help = helps.get(name)
        if family.help is None:
            raise ValueError(f"{name}: no # HELP line")
        if family.kind == "histogram":
            _check_histogram(name, family)
    return families


def _line(line: str, families: dict[str, Family], helps: dict[str, str], current: str | None) -> str | None:
    if line.startswith("# HELP "):
        name, _, help_text = line[7:].partition(" ")
        if not re.fullmatch(_NAME, name) or name in helps or (name in families and families[name].samples):
            raise ValueError("a misplaced or repeated HELP")
        helps[name] = help_text
        return current
    if line.startswith("# TYPE "):
        name, _, kind = line[7:].partition(" ")
        if not re.fullmatch(_NAME, name) or kind not in _KINDS or name in families:
            raise ValueError("a bad or repeated TYPE")
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError("a counter's name must end with _total")
        families[name] = Family(kind)
        return name
    if not line or line.startswith("#"):
        raise ValueError("a blank line or an unknown comment")
    match = _SAMPLE.fullmatch(line)
    if match is None:
        raise ValueError("not a sample line")
    name, labels, value = match.groups()
    if current is None or name not in [current + s for s in _SUFFIXES.get(families[current].kind, ("",))]:
        raise ValueError(f"a sample outside its family's block (in {current!r})")
    key = name + (labels or "")
    family = families[current]
    if key in family.samples:
        raise ValueError("a repeated sample")
    number = float(value)  # accepts +Inf, -Inf and NaN, as the format does
    if family.kind == "counter" and not number >= 0:
        raise ValueError("a negative counter")
    family.samples[key] = number
    return current


def labels_of(sample: str) -> dict[str, str]:
    """The labels of a sample key ``name{a="b",...}``, unescaped."""
    inner = sample.partition("{")[2].removesuffix("}")
    return {k: re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], v) for k, v in _LABEL.findall(inner)}


def _check_histogram(name: str, family: Family) -> None:
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    totals: dict[str, dict[tuple[tuple[str, str], ...], float]] = {"_sum": {}, "_count": {}}
    for sample, value in family.samples.items():
        metric = sample.partition("{")[0]
        labels = labels_of(sample)
        if metric == name + "_bucket":
            le = labels.pop("le")
            series.setdefault(tuple(labels.items()), []).append((float(le), value))
        else:
            totals[metric[len(name):]][tuple(labels.items())] = value
    if set(series) != set(totals["_count"]) or set(series) != set(totals["_sum"]):
        raise ValueError(f"{name}: buckets, _sum and _count name different series")
    for key, buckets in series.items():
        bounds, counts = [b for b, _ in buckets], [c for _, c in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds) or bounds[-1] != float("inf"):
            raise ValueError(f"{name}{dict(key)}: bucket bounds must increase and end with +Inf")
        if counts != sorted(counts) or counts[-1] != totals["_count"][key]:
            raise ValueError(f"{name}{dict(key)}: buckets must be cumulative and end at _count")
