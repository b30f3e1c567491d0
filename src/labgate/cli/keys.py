"""``labgate keys`` and ``labgate audit``: virtual keys and the audit log, straight in the history database.

The store is found as ``labgate history`` finds it (``--config DIR`` reads
``store.url``, ``--store URL`` names it, default: the default SQLite file).
A running gateway sees every change within ``auth.keys_refresh_s`` (0.5 s):
no gateway needs to be running, and none needs a restart.

    labgate keys create NAME [--project P] [--team T] [--model GLOB]... [--expires 30d | ISO]
                             [--rpm N] [--tpm N] [--budget USD] [--budget-period month]
    labgate keys list [--all] [--json]
    labgate keys show ID|NAME [--json]
    labgate keys revoke ID|NAME
    labgate keys rotate ID|NAME
    labgate audit [--since 7d] [--action key.] [--limit 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from labgate import audit
from labgate.cli.history import store_url
from labgate.config.problems import ConfigError
from labgate.errors import LabgateError
from labgate.keys import PERIODS, KeyAdmin, KeySpec, VirtualKey
from labgate.store import store_for
from labgate.store.base import Store
from labgate.store.query import parse_time

Command = Callable[[argparse.Namespace, Store, IO[str]], Awaitable[int]]


def register(commands: Any) -> None:
    p = commands.add_parser("keys", help="virtual API keys: create, list, show, revoke, rotate")
    sub = p.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    create = sub.add_parser("create", help="a new key (its secret is printed once)")
    _store_args(create)
    create.add_argument("name")
    create.add_argument("--project")
    create.add_argument("--team")
    create.add_argument("--model", action="append", dest="models", metavar="GLOB",
                        help="an allowed model or glob (repeat; default: every model)")
    create.add_argument("--expires", help="an age from now (30d, 12h) or an ISO 8601 time")
    create.add_argument("--rpm", type=int)
    create.add_argument("--tpm", type=int)
    create.add_argument("--budget", type=float, metavar="USD")
    create.add_argument("--budget-period", choices=PERIODS)
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(run=_run(_create))
    listing = sub.add_parser("list", help="every key (never a secret)")
    _store_args(listing)
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_run(_list))
    for verb, text in (("show", "one key"), ("revoke", "refuse a key from now on (every worker, within 1 s)"),
                       ("rotate", "a new secret for a key (the old one stops working)")):
        cmd = sub.add_parser(verb, help=text)
        _store_args(cmd)
        cmd.add_argument("key", help="the key's id (key_…) or its name")
        cmd.add_argument("--json", action="store_true", help="print JSON")
        cmd.set_defaults(run=_run({"show": _show, "revoke": _revoke, "rotate": _rotate}[verb]))

    a = commands.add_parser("audit", help="the audit log: admin actions (keys, config, cache)")
    _store_args(a)
    a.add_argument("--since", help="ISO 8601, Unix seconds, or an age (2h, 7d)")
    a.add_argument("--action", help="exactly, or a prefix ending in '.' (key.)")
    a.add_argument("--limit", type=int, default=100)
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(run=_run(_audit))


def _store_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="DIR", help="config directory or labgate.yaml: use its store.url")
    where.add_argument("--store", metavar="URL", help="a SQLite file or postgresql:// URL")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment
        return "cli"


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(_with_store(store_url(args), args, command))
        except (LabgateError, ValueError) as exc:
            print(f"labgate: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            print(f"labgate: the config is invalid:\n{exc}", file=sys.stderr)
            return 1
    return run


async def _with_store(url: str, args: argparse.Namespace, command: Command) -> int:
    store = store_for(url)
    try:
        await store.open()
    except Exception as exc:
        raise ValueError(f"cannot open the store {store.display_url}: {exc}") from None
    try:
        return await command(args, store, sys.stdout)
    finally:
        await store.aclose()


async def _create(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    expires = None
    if args.expires:
        given, now = args.expires.strip(), time.time()
        at = parse_time(given, now=now)
        # an age (30d) means "from now" here; parse_time reads it as "that long ago"
        expires = 2 * now - at if given[-1:].isalpha() and given[:-1].replace(".", "", 1).isdigit() else at
    data = {"name": args.name, "project": args.project, "team": args.team, "models": args.models,
            "expires_at": expires, "rpm": args.rpm, "tpm": args.tpm, "budget_usd": args.budget,
            "budget_period": args.budget_period}
    secret, key = await KeyAdmin(store).create(KeySpec.parse({k: v for k, v in data.items() if v is not None}),
                                               actor=_actor())
    if args.json:
        out.write(orjson.dumps({"key": secret, **key.public()}).decode() + "\n")
    else:
        out.write(f"{secret}\n")
        print(f"created {key.id} ({key.name}); the key above is shown only now: keep it safe", file=sys.stderr)
    return 0


async def _list(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    keys = await KeyAdmin(store).list(include_revoked=args.all)
    if args.json:
        out.write(orjson.dumps([k.public() for k in keys]).decode() + "\n")
        return 0
    rows: list[tuple[str, ...]] = [
        ("ID", "NAME", "KEY", "STATUS", "PROJECT", "MODELS", "RPM", "TPM", "BUDGET", "EXPIRES")]
    rows += [_row(k) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    return 0


def _row(k: VirtualKey) -> tuple[str, ...]:
    p = k.public()
    budget = f"${k.budget_usd:g}/{k.budget_period}" if k.budget_usd is not None else "-"
    return (k.id, k.name, p["key_hint"], p["status"], k.project or "-",
            ",".join(k.models) if k.models is not None else "*", str(k.rpm or "-"), str(k.tpm or "-"), budget,
            _when(k.expires_at))


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _show(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    key = await KeyAdmin(store).get(args.key)
    _print(out, key.public(), args.json)
    return 0


async def _revoke(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    key = await KeyAdmin(store).revoke(args.key, actor=_actor())
    _print(out, key.public(), args.json)
    return 0


async def _rotate(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    secret, key = await KeyAdmin(store).rotate(args.key, actor=_actor())
    if args.json:
        out.write(orjson.dumps({"key": secret, **key.public()}).decode() + "\n")
    else:
        out.write(f"{secret}\n")
        print(f"rotated {key.id} ({key.name}); the old key no longer works", file=sys.stderr)
    return 0


async def _audit(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    since = parse_time(args.since) if args.since else None
    found = await audit.entries(store, since=since, action=args.action, limit=args.limit)
    if args.json:
        out.write(orjson.dumps(found).decode() + "\n")
        return 0
    for e in found:
        out.write(f"{_when(e['ts'])}  {e['actor']}  {e['action']}  {e['target'] or '-'}\n")
    return 0


def _print(out: IO[str], data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.write(orjson.dumps(data).decode() + "\n")
        return
    for name, value in data.items():
        out.write(f"{name:14} {'-' if value is None else value}\n")
