"""``labgate cache``: stats, keys, watch and flush the response cache.

By default the commands ask a running gateway (``/admin/cache/*``): the URL
and master key come from ``--config DIR`` (``server.host/port``,
``auth.master_key_env``), or ``--url`` and ``--key-env``; without either,
``http://127.0.0.1:4000`` and ``LABGATE_API_KEY``. ``--redis URL`` works on a
Redis backend directly instead (no gateway needed; entries and bytes only,
hit rates are counted by the gateway processes).

    labgate cache stats [--scan-limit N] [--json]        entries, bytes, hit rate per namespace
    labgate cache keys [--namespace N] [--pattern P] [--limit 100] [--json]
    labgate cache watch [--interval 5]                   stats, refreshed until Ctrl-C
    labgate cache flush [--namespace N] [--yes]          asks first unless --yes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import orjson

DEFAULT_URL = "http://127.0.0.1:4000"
WATCH_INTERVAL_S = 5.0  # the seeds' monitor refreshes every 5 s


class CacheCommandError(Exception):
    """A problem to report on stderr with exit status 1."""


def register(commands: Any) -> None:
    p = commands.add_parser("cache", help="response cache: stats, keys, watch, flush")
    sub = p.add_subparsers(dest="cache_command", required=True, metavar="SUBCOMMAND")
    stats = sub.add_parser("stats", help="entries, bytes and hit rate per namespace")
    _target(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    _scan_limit(stats)
    stats.set_defaults(run=_run(_stats))
    keys = sub.add_parser("keys", help="list cache keys with their size and time to live")
    _target(keys)
    keys.add_argument("--namespace", "-n", help="only this namespace")
    keys.add_argument("--pattern", "-p", help="a glob over the key's hash (e.g. 'a1*')")
    keys.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    keys.add_argument("--json", action="store_true", help="print JSON")
    keys.set_defaults(run=_run(_keys))
    watch = sub.add_parser("watch", help=f"stats, refreshed every {WATCH_INTERVAL_S:g} s until Ctrl-C")
    _target(watch)
    watch.add_argument("--interval", type=float, default=WATCH_INTERVAL_S, help="seconds between refreshes")
    watch.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)  # refreshes, then stop (tests)
    _scan_limit(watch)
    watch.set_defaults(run=_run(_watch))
    flush = sub.add_parser("flush", help="delete cache entries (asks for confirmation)")
    _target(flush)
    flush.add_argument("--namespace", "-n", help="only this namespace (default: every namespace)")
    flush.add_argument("--yes", "-y", action="store_true", help="do not ask")
    flush.set_defaults(run=_run(_flush))


def _scan_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scan-limit", type=int, metavar="N",
                   help="read at most N keys (default 20000); past it the figures are lower bounds")


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="DIR", help="the gateway's config: its URL and master key")
    p.add_argument("--url", help=f"the gateway (default: from --config, else {DEFAULT_URL})")
    p.add_argument("--key-env", metavar="VAR", help="variable holding the master key "
                                                    "(default: auth.master_key_env of --config, else LABGATE_API_KEY)")
    p.add_argument("--redis", metavar="URL", help="work on this Redis directly instead of asking a gateway")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")


class Backend:
    """Where the commands go: a gateway's admin API, or a Redis server."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.redis = args.redis
        self.client: Any = None
        if not self.redis:
            from labgate.cli.reload import GatewayClient

            url, key = _gateway(args)
            self.client = GatewayClient(url, key, args.timeout)

    def call(self, method: str, path: str, params: dict[str, Any]) -> Any:
        if self.redis:
            return asyncio.run(self._redis(path, params))
        from urllib.parse import urlencode

        query = urlencode({k: v for k, v in params.items() if v is not None})
        try:
            status, body = self.client.call(method, f"/admin/cache/{path}" + (f"?{query}" if query else ""))
        except OSError as exc:
            raise CacheCommandError(f"no gateway answers at {self.client.url}: "
                                    f"{getattr(exc, 'reason', exc)}") from None
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(body)[:200]
            raise CacheCommandError(f"{self.client.url} answered {status}: {message}")
        return body

    async def _redis(self, path: str, params: dict[str, Any]) -> Any:
        from labgate.state import inventory
        from labgate.state.base import StateUnavailableError
        from labgate.state.redis import RedisEntries, RedisLink

        try:
            entries = RedisEntries(RedisLink(self.redis, timeout_s=self.args.timeout, retry_s=1.0, max_connections=4))
        except RuntimeError as exc:  # the redis extra is missing
            raise CacheCommandError(str(exc)) from None
        try:
            if path == "stats":
                return await inventory.stats(entries, limit=params.get("scan_limit") or inventory.SCAN_LIMIT)
            if path == "keys":
                return {"data": await inventory.keys(entries, namespace=params.get("namespace"),
                                                     pattern=params.get("pattern"), limit=params["limit"])}
            deleted = await inventory.flush(entries, namespace=params.get("namespace"))
            return {"deleted": deleted, "namespace": params.get("namespace")}
        except StateUnavailableError as exc:
            raise CacheCommandError(str(exc)) from None
        finally:
            await entries.aclose()

    @property
    def where(self) -> str:
        return self.redis if self.redis else self.client.url


def _gateway(args: argparse.Namespace) -> tuple[str, str | None]:
    url, key_env = args.url, args.key_env
    if args.config:
        from labgate.cli.reload import _default_url
        from labgate.config.load import load_config

        config = load_config(args.config)
        url = url or _default_url(config)
        key_env = key_env or config.gateway.auth.master_key_env
    return url or DEFAULT_URL, os.environ.get(key_env or "LABGATE_API_KEY")


def _run(command: Callable[[argparse.Namespace, Backend, IO[str]], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from labgate.config.problems import ConfigError

        try:
            return command(args, Backend(args), sys.stdout)
        except (CacheCommandError, ValueError) as exc:
            print(f"labgate cache: {exc}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            print(f"labgate cache: the config is invalid:\n{exc}", file=sys.stderr)
            return 1
    return run


def _stats(args: argparse.Namespace, backend: Backend, out: IO[str]) -> int:
    data = backend.call("GET", "stats", {"scan_limit": args.scan_limit})
    if args.json:
        out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(render_stats(data, backend.where))
    return 0


def render_stats(data: dict[str, Any], where: str) -> str:
    """The stats as the seeds' monitor prints them: backend, then one line per namespace."""
    backend = data.get("backend") or {}
    up = "up" if backend.get("up", True) else f"DOWN ({backend.get('last_error')})"
    lines = [f"cache at {where}: {backend.get('backend', '?')} backend, {up}"]
    total = data.get("total") or {}
    rate = total.get("hit_rate")
    lines.append(f"  total        {total.get('entries', 0)} entries, {_size(total.get('bytes', 0))}"
                 + (f", hit rate {_pct(rate)} ({total.get('hits', 0)} hits / {total.get('misses', 0)} misses)"
                    if "hits" in total else ""))
    lines.append(f"  {'namespace':<20} {'entries':>8} {'memory':>10} {'hits':>8} {'misses':>8} {'hit rate':>9} "
                 f"{'bypass':>7}")
    for name, ns in (data.get("namespaces") or {}).items():
        lines.append(f"  {name:<20} {ns.get('entries', 0):>8} {_size(ns.get('bytes', 0)):>10} "
                     f"{ns.get('hits', '-'):>8} {ns.get('misses', '-'):>8} {_pct(ns.get('hit_rate')):>9} "
                     f"{ns.get('bypass', '-'):>7}")
    if data.get("truncated"):
        lines.append("  (scan stopped at its limit: figures are lower bounds)")
    return "\n".join(lines) + "\n"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _keys(args: argparse.Namespace, backend: Backend, out: IO[str]) -> int:
    data = backend.call("GET", "keys", {"namespace": args.namespace, "pattern": args.pattern, "limit": args.limit})
    rows = data["data"]
    if args.json:
        out.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for row in rows:
        ttl = "no expiry" if row["ttl_s"] is None else f"ttl {row['ttl_s']:.0f}s"
        out.write(f"{row['key']}  {_size(row['bytes'])}  {ttl}\n")
    out.write(f"({len(rows)} keys)\n")
    return 0


def _watch(args: argparse.Namespace, backend: Backend, out: IO[str]) -> int:
    shown = 0
    try:
        while True:
            data = backend.call("GET", "stats", {"scan_limit": args.scan_limit})
            if out.isatty():
                out.write("\x1b[2J\x1b[H")  # clear the screen, like `watch`
            out.write(time.strftime("%H:%M:%S ") + render_stats(data, backend.where))
            out.flush()
            shown += 1
            if args.count and shown >= args.count:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _flush(args: argparse.Namespace, backend: Backend, out: IO[str]) -> int:
    what = f"namespace {args.namespace!r}" if args.namespace else "EVERY namespace"
    if not args.yes:
        if not sys.stdin.isatty():
            raise CacheCommandError("flush asks for confirmation; pass --yes when not at a terminal")
        answer = input(f"Delete the cache entries of {what} at {backend.where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.write("nothing flushed\n")
            return 1
    data = backend.call("POST", "flush", {"namespace": args.namespace})
    out.write(f"flushed {data['deleted']} entries ({what})\n")
    return 0
