"""``labgate cost report``: spend from the request history, grouped by key, project, model, provider or day.

    labgate cost report [--by key|project|model|provider|day] [--since 7d] [--until …]
                        [--format table|csv|json] [--config DIR | --store URL]

Reads the history database directly (as ``labgate history`` does); a key's
project comes from the virtual keys table. Requests without a known price
count in ``requests`` and ``unpriced`` but add nothing to ``cost_usd``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from typing import IO, Any

import orjson

from labgate.cli.keys import _run, _store_args
from labgate.store.base import Store
from labgate.store.query import Filter, iso, parse_time
from labgate.store.schema import KEYS_TABLE, TABLE

GROUPS = ("key", "project", "model", "provider", "day")
DAY_S = 86400


def register(commands: Any) -> None:
    p = commands.add_parser("cost", help="spend: labgate cost report")
    sub = p.add_subparsers(dest="cost_command", required=True, metavar="SUBCOMMAND")
    report = sub.add_parser("report", help="spend grouped by key, project, model, provider or day")
    _store_args(report)
    report.add_argument("--by", choices=GROUPS, default="model")
    report.add_argument("--since", help="ISO 8601, Unix seconds, or an age (2h, 7d)")
    report.add_argument("--until", help="ISO 8601, Unix seconds, or an age")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.set_defaults(run=_run(_report))


async def spend(store: Store, *, by: str, since: float | None = None,
                until: float | None = None) -> list[dict[str, Any]]:
    """One row per group, most expensive first: requests, tokens, cost_usd, unpriced."""
    clause, params = Filter(since=since, until=until).where(store)
    group = {"key": "r.key_id", "project": "k.project", "model": "r.model", "provider": "r.provider",
             "day": store.dialect.bucket(DAY_S)}[by]
    # the history filter's columns (timestamp, …) exist only in requests: unqualified, they are not ambiguous
    rows = await store.fetch(
        f"SELECT {group} AS grp, count(*) AS requests, sum(coalesce(r.prompt_tokens, 0)) AS prompt_tokens, "
        f"sum(coalesce(r.completion_tokens, 0)) AS completion_tokens, sum(coalesce(r.cost, 0)) AS cost, "
        f"sum(CASE WHEN r.cost IS NULL THEN 1 ELSE 0 END) AS unpriced "
        f"FROM {TABLE} r LEFT JOIN {KEYS_TABLE} k ON k.id = r.key_id{clause} "
        f"GROUP BY 1 ORDER BY 5 DESC", params)
    return [{by: (iso(r["grp"]) or "")[:10] if by == "day" and r["grp"] is not None else r["grp"],
             "requests": int(r["requests"]), "prompt_tokens": int(r["prompt_tokens"]),
             "completion_tokens": int(r["completion_tokens"]), "cost_usd": round(float(r["cost"]), 10),
             "unpriced": int(r["unpriced"])} for r in rows]


async def _report(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    rows = await spend(store, by=args.by, since=parse_time(args.since) if args.since else None,
                       until=parse_time(args.until) if args.until else None)
    if args.format == "json":
        out.write(orjson.dumps(rows).decode() + "\n")
    elif args.format == "csv":
        writer = csv.DictWriter(out, fieldnames=[args.by, "requests", "prompt_tokens", "completion_tokens",
                                                 "cost_usd", "unpriced"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        table = [(args.by.upper(), "REQUESTS", "PROMPT", "COMPLETION", "COST (USD)", "UNPRICED")]
        table += [(str(r[args.by] if r[args.by] is not None else "-"), str(r["requests"]), str(r["prompt_tokens"]),
                   str(r["completion_tokens"]), f"{r['cost_usd']:.6f}", str(r["unpriced"])) for r in rows]
        total = sum(r["cost_usd"] for r in rows)
        table.append(("TOTAL", str(sum(r["requests"] for r in rows)), "", "", f"{total:.6f}", ""))
        widths = [max(len(row[i]) for row in table) for i in range(6)]
        for row in table:
            out.write("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(row, widths, strict=True))) + "\n")
    sys.stdout.flush()
    return 0
