"""Analytics over the history: the same questions, the same answers, on either store.

Every function takes the store, a :class:`~labgate.store.query.Filter` (time
window and any other filter) and returns plain lists of dicts, sorted the
same way on both stores (groups with no value, e.g. no provider because
auth failed, sort last, as ``None``). Ratios and averages are computed here
from SQL counts and sums, and rounded, so both stores agree to the digit.

Definitions (the tests check each one against hand-computed values):

- ``volume``: requests per UTC time bucket (``bucket`` seconds) and group.
- ``latency``: ``percentile_cont`` p50/p95/p99 of ``response_time_ms`` and of
  ``ttft_ms`` (streams only: a whole answer's first byte is its last), per
  bucket and group; NULLs ignored.
- ``tokens``: prompt, completion and total tokens and cost per group.
- ``errors``: per group, requests and errors (``outcome`` ``error`` or
  ``stream_error``; a client that left is not an error), and the error rate;
  plus the count of each error type.
- ``prompts``: the most common normalised prompts (``capture: full`` only).
- ``cache``: requests, cache hits, hit rate and the tokens hits saved, per group.
- ``summary``: the totals ``labgate history stats`` prints.
"""

from __future__ import annotations

from typing import Any

from labgate.store.base import Store
from labgate.store.query import Filter, iso
from labgate.store.schema import TABLE

GROUPS = {"model": "model", "provider": "provider", "key": "key_id", "deployment": "deployment",
          "endpoint": "endpoint", "experiment": "experiment", "variant": "variant", "error_type": "error_type"}
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400, "week": 604800}
_ERROR = "CASE WHEN outcome IN ('error', 'stream_error') THEN 1 ELSE 0 END"
_HIT = "CASE WHEN cache_hit THEN 1 ELSE 0 END"
EVERYTHING = Filter()


def bucket_seconds(given: str | int) -> int:
    """``minute`` / ``hour`` / ``day`` / ``week``, or a number of seconds."""
    if isinstance(given, int) or str(given).isdigit():
        seconds = int(given)
        if seconds < 1:
            raise ValueError("bucket must be at least 1 second")
        return seconds
    try:
        return BUCKETS[str(given)]
    except KeyError:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)} or seconds; got {given!r}") from None


def _group(by: str | None) -> str:
    if by is None:
        return "NULL"
    try:
        return GROUPS[by]
    except KeyError:
        raise ValueError(f"group by one of {', '.join(GROUPS)}; got {by!r}") from None


def _order(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(part for k in keys for part in (row[k] is None, row[k] if row[k] is not None else 0))
    return sorted(rows, key=key)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


async def volume(store: Store, where: Filter = EVERYTHING, *, bucket: str | int = "hour",
                 by: str | None = "model") -> list[dict[str, Any]]:
    seconds = bucket_seconds(bucket)
    clause, params = where.where(store)
    rows = await store.fetch(
        f"SELECT {store.dialect.bucket(seconds)} AS bucket, {_group(by)} AS grp, count(*) AS requests, "
        f"sum({_ERROR}) AS errors FROM {TABLE}{clause} GROUP BY 1, 2", params)
    out = [{"bucket": iso(int(r["bucket"])), "group": r["grp"], "requests": int(r["requests"]),
            "errors": int(r["errors"])} for r in rows]
    return _order(out, "bucket", "group")


async def latency(store: Store, where: Filter = EVERYTHING, *, bucket: str | int | None = None,
                  by: str | None = "model") -> list[dict[str, Any]]:
    d = store.dialect
    clause, params = where.where(store)
    bucket_sql = d.bucket(bucket_seconds(bucket)) if bucket is not None else "NULL"
    ttft = "CASE WHEN stream THEN ttft_ms END"
    percentiles = ", ".join(
        [f"{d.percentile('response_time_ms', f)} AS p{n}" for n, f in ((50, 0.5), (95, 0.95), (99, 0.99))]
        + [f"{d.percentile(ttft, f)} AS ttft_p{n}" for n, f in ((50, 0.5), (95, 0.95), (99, 0.99))])
    rows = await store.fetch(
        f"SELECT {bucket_sql} AS bucket, {_group(by)} AS grp, count(*) AS requests, "
        f"sum(response_time_ms) AS latency_sum, count(response_time_ms) AS latency_n, {percentiles} "
        f"FROM {TABLE}{clause} GROUP BY 1, 2", params)
    out = []
    for r in rows:
        out.append({
            "bucket": iso(int(r["bucket"])) if r["bucket"] is not None else None, "group": r["grp"],
            "requests": int(r["requests"]),
            "mean_ms": _ms(r["latency_sum"] / r["latency_n"]) if r["latency_n"] else None,
            "p50_ms": _ms(r["p50"]), "p95_ms": _ms(r["p95"]), "p99_ms": _ms(r["p99"]),
            "ttft_p50_ms": _ms(r["ttft_p50"]), "ttft_p95_ms": _ms(r["ttft_p95"]), "ttft_p99_ms": _ms(r["ttft_p99"]),
        })
    return _order(out, "bucket", "group")


async def tokens(store: Store, where: Filter = EVERYTHING, *, by: str | None = "model") -> list[dict[str, Any]]:
    clause, params = where.where(store)
    rows = await store.fetch(
        f"SELECT {_group(by)} AS grp, count(*) AS requests, sum(prompt_tokens) AS prompt_tokens, "
        f"sum(completion_tokens) AS completion_tokens, sum(tokens_used) AS total_tokens, "
        f"sum(cost) AS cost, count(cost) AS priced FROM {TABLE}{clause} GROUP BY 1", params)
    out = [{"group": r["grp"], "requests": int(r["requests"]),
            "prompt_tokens": int(r["prompt_tokens"] or 0), "completion_tokens": int(r["completion_tokens"] or 0),
            "total_tokens": int(r["total_tokens"] or 0),
            "cost": round(float(r["cost"]), 6) if r["priced"] else None} for r in rows]
    return _order(out, "group")


async def errors(store: Store, where: Filter = EVERYTHING, *, by: str | None = "provider") -> dict[str, Any]:
    clause, params = where.where(store)
    rows = await store.fetch(
        f"SELECT {_group(by)} AS grp, count(*) AS requests, sum({_ERROR}) AS errors "
        f"FROM {TABLE}{clause} GROUP BY 1", params)
    groups = _order([{"group": r["grp"], "requests": int(r["requests"]), "errors": int(r["errors"]),
                      "error_rate": _ratio(int(r["errors"]), int(r["requests"]))} for r in rows], "group")
    joiner = " AND " if clause else " WHERE "
    types = await store.fetch(
        f"SELECT error_type, outcome, count(*) AS n FROM {TABLE}{clause}{joiner}outcome IN ('error', 'stream_error') "
        f"GROUP BY 1, 2", params)
    total = sum(g["requests"] for g in groups)
    by_type = sorted(({"error_type": t["error_type"], "outcome": t["outcome"], "count": int(t["n"]),
                       "rate": _ratio(int(t["n"]), total)} for t in types),
                     key=lambda t: (-t["count"], t["error_type"] or "", t["outcome"]))
    return {"groups": groups, "types": by_type}


async def prompts(store: Store, where: Filter = EVERYTHING, *, limit: int = 20) -> list[dict[str, Any]]:
    clause, params = where.where(store)
    joiner = " AND " if clause else " WHERE "
    rows = await store.fetch(
        f"SELECT prompt, count(*) AS n, count(DISTINCT model) AS models FROM {TABLE}{clause}{joiner}"
        f"prompt IS NOT NULL GROUP BY prompt ORDER BY n DESC, prompt LIMIT {int(limit)}", params)
    return [{"prompt": r["prompt"], "count": int(r["n"]), "models": int(r["models"])} for r in rows]


async def cache(store: Store, where: Filter = EVERYTHING, *, by: str | None = None) -> list[dict[str, Any]]:
    clause, params = where.where(store)
    rows = await store.fetch(
        f"SELECT {_group(by)} AS grp, count(*) AS requests, sum({_HIT}) AS hits, "
        f"sum(CASE WHEN cache_hit THEN coalesce(tokens_used, 0) ELSE 0 END) AS saved FROM {TABLE}{clause} GROUP BY 1",
        params)
    # a hit's row carries the usage of the answer it replayed: the upstream tokens it saved
    return _order([{"group": r["grp"], "requests": int(r["requests"]), "cache_hits": int(r["hits"]),
                    "hit_rate": _ratio(int(r["hits"]), int(r["requests"])), "saved_tokens": int(r["saved"] or 0)}
                   for r in rows], "group")


async def summary(store: Store, where: Filter = EVERYTHING) -> dict[str, Any]:
    """Totals over the window: volume, outcomes, latency, tokens, cost, cache, busiest models."""
    overall = (await latency(store, where, by=None)) or [{}]
    token_rows = await tokens(store, where, by=None)
    by_model = sorted(await tokens(store, where, by="model"), key=lambda r: (-r["requests"], r["group"] or ""))
    clause, params = where.where(store)
    outcome_rows = await store.fetch(
        f"SELECT outcome, count(*) AS n, min(timestamp) AS first, max(timestamp) AS last "
        f"FROM {TABLE}{clause} GROUP BY outcome", params)
    total = sum(int(r["n"]) for r in outcome_rows)
    outcomes = {r["outcome"]: int(r["n"]) for r in outcome_rows}
    hits = await cache(store, where)
    first = min((r["first"] for r in outcome_rows), default=None)
    last = max((r["last"] for r in outcome_rows), default=None)
    errors_n = outcomes.get("error", 0) + outcomes.get("stream_error", 0)
    return {
        "requests": total, "first": iso(first), "last": iso(last),
        "outcomes": dict(sorted(outcomes.items())), "error_rate": _ratio(errors_n, total),
        "latency": {k: overall[0].get(k) for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms",
                                                    "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms")},
        "tokens": {k: token_rows[0][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cost")}
        if token_rows else {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": None},
        "cache_hit_rate": hits[0]["hit_rate"] if hits else None,
        "models": [{"model": r["group"], "requests": r["requests"], "total_tokens": r["total_tokens"]}
                   for r in by_model],
    }
