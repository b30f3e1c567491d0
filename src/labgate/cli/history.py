"""``labgate history``: search, show, export, replay and summarise the request history.

Every command finds the store the way ``serve`` does: ``--config DIR`` reads
``store.url`` from that config, ``--store URL`` names it directly (a SQLite
path or ``postgresql://…``), and neither means the default SQLite file in
the data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from labgate.cli.style import shown
from labgate.config.problems import ConfigError
from labgate.store import is_postgres, resolve_url, store_for
from labgate.store.base import Store
from labgate.store.capture import INPUT_KEYS

T = TypeVar("T")
_PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/chat/completions", "completions": "/v1/completions"}
_NOT_REPLAYED = frozenset({"stream", "stream_options"})


class HistoryCommandError(Exception):
    """A problem to report on stderr with exit status 1."""


def register(commands: Any) -> None:
    p = commands.add_parser("history", help="search, show, export, replay and summarise request history")
    sub = p.add_subparsers(dest="history_command", required=True, metavar="SUBCOMMAND")

    search = sub.add_parser("search", help="list matching requests, newest first")
    _where(search)
    search.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    search.add_argument("--offset", type=int, default=0)
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(run=_run(_search))

    show = sub.add_parser("show", help="one request in full")
    _store_args(show)
    show.add_argument("id", help="request id (x-request-id) or row id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=_run(_show))

    export = sub.add_parser("export", help="every matching request, oldest first")
    _where(export)
    export.add_argument("--format", choices=("jsonl", "json", "csv"), default="jsonl")
    export.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(run=_run(_export))

    replay = sub.add_parser("replay", help="send a stored request again (optionally to another model) "
                                           "and print both answers side by side")
    _store_args(replay)
    replay.add_argument("id", help="request id (x-request-id) or row id")
    replay.add_argument("--model", help="send it to this model instead")
    replay.add_argument("--url", help="the gateway (default: server.host/port of --config, else "
                                      "http://127.0.0.1:4000)")
    replay.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the key to send "
                        "(default: auth.master_key_env of --config, else LABGATE_API_KEY)")
    replay.add_argument("--timeout", type=float, default=300.0)
    replay.set_defaults(run=_run(_replay))

    stats = sub.add_parser("stats", help="totals: volume, outcomes, latency, tokens, cache, busiest models")
    _where(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=_run(_stats))


def _store_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="DIR", help="config directory or labgate.yaml: use its store.url")
    where.add_argument("--store", metavar="URL", help="a SQLite file or postgresql:// URL")


def _where(p: argparse.ArgumentParser) -> None:
    _store_args(p)
    p.add_argument("--model")
    p.add_argument("--provider")
    p.add_argument("--status", help="HTTP status (200), class (5xx) or outcome "
                                    "(ok, error, stream_error, client_disconnected)")
    p.add_argument("--text", help="substring of the messages or the response")
    p.add_argument("--since", help="ISO 8601, Unix seconds, or an age (2h, 7d)")
    p.add_argument("--until", help="ISO 8601, Unix seconds, or an age")
    p.add_argument("--key", help="API key id (key-…)")
    p.add_argument("--trace-id", help="the W3C trace id (32 hex digits) of a traced request")


def _run(command: Callable[[argparse.Namespace, Store, IO[str]], Awaitable[int]]) -> Callable[[argparse.Namespace],
                                                                                             int]:
    def run(args: argparse.Namespace) -> int:
        try:
            url = store_url(args)
            if not is_postgres(url) and not Path(url).exists():
                raise HistoryCommandError(f"no history at {url} (nothing recorded yet, or another store: "
                                          "see --config / --store)")
            return asyncio.run(_with_store(url, args, command))
        except (HistoryCommandError, ValueError) as exc:
            print(f"labgate history: {exc}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            print(f"labgate history: the config is invalid:\n{exc}", file=sys.stderr)
            return 1
    return run


async def _with_store(url: str, args: argparse.Namespace,
                      command: Callable[[argparse.Namespace, Store, IO[str]], Awaitable[int]]) -> int:
    store = store_for(url)
    try:
        await store.open()
    except Exception as exc:
        raise HistoryCommandError(f"cannot open the history store {store.display_url}: {exc}") from None
    try:
        return await command(args, store, sys.stdout)
    finally:
        await store.aclose()


def store_url(args: argparse.Namespace) -> str:
    if args.store:
        return resolve_url(args.store)
    if args.config:
        from labgate.config.load import load_config

        config = load_config(args.config)
        return resolve_url(config.gateway.store.url, source=config.source)
    return resolve_url(None)


def _filter(args: argparse.Namespace) -> Any:
    from labgate.store.query import Filter, parse_time

    return Filter(model=args.model, provider=args.provider, status=args.status, text=args.text, key=args.key,
                  trace_id=args.trace_id, since=parse_time(args.since) if args.since else None,
                  until=parse_time(args.until) if args.until else None)


# --- search / show ---------------------------------------------------------------


async def _search(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    from labgate.store.query import search

    rows = await search(store, _filter(args), limit=args.limit, offset=args.offset)
    if args.json:
        out.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not rows:
        print("no matching requests", file=sys.stderr)
        return 0
    header = ("ID", "TIME (UTC)", "MODEL", "PROVIDER", "STATUS", "MS", "TOKENS", "PROMPT")
    table = [header] + [tuple(shown(cell) for cell in (
        str(r["id"]), (r["timestamp"] or "")[:19].replace("T", " "), r["model"] or "-", r["provider"] or "-",
        f"{r['status']}" + ("" if r["outcome"] == "ok" else f" {r['outcome']}"),
        f"{r['response_time_ms']:.0f}" if r["response_time_ms"] is not None else "-",
        str(r["tokens_used"]) if r["tokens_used"] is not None else "-",
        r["prompt"] or "")) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    room = max(20, shutil.get_terminal_size((120, 24)).columns - sum(widths) - 2 * len(widths))
    for row in table:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, textwrap.shorten(row[-1], room, placeholder="…")]).rstrip() + "\n")
    return 0


async def _show(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    record = await _record(store, args.id)
    if args.json:
        out.write(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    skip = {"messages", "response", "tool_calls", "parameters", "failed_attempts"}
    for name, value in record.items():
        if name not in skip and value is not None:
            text = orjson.dumps(value).decode() if isinstance(value, (list, dict)) else str(value)
            out.write(f"{name:18} {shown(text)}\n")
    if record["parameters"]:
        out.write(f"{'parameters':18} {shown(orjson.dumps(record['parameters']).decode())}\n")
    for failure in record["failed_attempts"] or ():
        cause = f"{failure['deployment']}: {failure['error']}: {failure['message']}"
        out.write(f"{'failed attempt':18} {shown(cause)}\n")
    if record["capture"] != "full":
        out.write("\n(content not captured: store.capture was metadata)\n")
        return 0
    out.write("\n--- request\n")
    messages = record["messages"]
    for message in messages if isinstance(messages, list) else [{"role": "prompt", "content": messages}]:
        if isinstance(message, dict):
            content = message.get("content")
            text = content if isinstance(content, str) else orjson.dumps(content).decode()
            out.write(shown(f"[{message.get('role')}] {text}", keep="\n\t") + "\n")
        else:
            out.write(shown(f"{message}", keep="\n\t") + "\n")
    out.write("--- response\n")
    out.write(shown(record["response"] or "", keep="\n\t") + "\n")
    if record["tool_calls"]:
        out.write(f"tool calls: {shown(orjson.dumps(record['tool_calls']).decode())}\n")
    return 0


async def _record(store: Store, ident: str) -> dict[str, Any]:
    from labgate.store.query import get

    record = await get(store, ident)
    if record is None:
        raise HistoryCommandError(f"no request with id {ident!r} in {store.display_url}")
    return record


# --- export / stats ----------------------------------------------------------------


async def _export(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    from labgate.store.export import export

    target = await asyncio.to_thread(Path(args.output).open, "wb") if args.output else sys.stdout.buffer
    try:
        async for chunk in export(store, _filter(args), args.format):
            target.write(chunk)
    finally:
        if args.output:
            target.close()
        else:
            target.flush()
    return 0


async def _stats(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    from labgate.store.analytics import errors, summary

    where = _filter(args)
    totals = await summary(store, where)
    failing = await errors(store, where, by="provider")
    if args.json:
        out.write(orjson.dumps({**totals, "errors": failing}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not totals["requests"]:
        out.write(f"no requests recorded in {store.display_url}\n")
        return 0
    latency, tokens = totals["latency"], totals["tokens"]
    out.write(f"store            {store.display_url}\n"
              f"requests         {totals['requests']}  ({totals['first']} … {totals['last']})\n"
              f"outcomes         {', '.join(f'{k} {v}' for k, v in totals['outcomes'].items())}\n"
              f"error rate       {_pct(totals['error_rate'])}\n"
              f"latency ms       p50 {latency['p50_ms']}  p95 {latency['p95_ms']}  p99 {latency['p99_ms']}\n"
              f"ttft ms (stream) p50 {latency['ttft_p50_ms']}  p95 {latency['ttft_p95_ms']}\n"
              f"tokens           {tokens['prompt_tokens']} prompt + {tokens['completion_tokens']} completion"
              f" = {tokens['total_tokens']}" + (f"  cost {tokens['cost']}" if tokens["cost"] is not None else "") + "\n"
              f"cache hit rate   {_pct(totals['cache_hit_rate'])}\n")
    out.write("models\n")
    for model in totals["models"]:
        out.write(f"  {shown(model['model'] or '(none)'):30} {model['requests']:>8} requests "
                  f"{model['total_tokens']:>10} tokens\n")
    if any(g["errors"] for g in failing["groups"]):
        out.write("errors by provider\n")
        for group in failing["groups"]:
            if group["errors"]:
                out.write(f"  {shown(group['group'] or '(none)'):30} {group['errors']:>8} of {group['requests']}"
                          f" ({_pct(group['error_rate'])})\n")
        out.write("errors by type\n")
        for kind in failing["types"]:
            out.write(f"  {shown(kind['error_type'] or '(none)'):30} {kind['count']:>8}  ({kind['outcome']})\n")
    return 0


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


# --- replay ------------------------------------------------------------------------


async def _replay(args: argparse.Namespace, store: Store, out: IO[str]) -> int:
    record = await _record(store, args.id)
    body = replay_body(record, model=args.model)
    url, key = _gateway(args)
    path = _PATHS[record["endpoint"]]
    started = time.perf_counter()
    status, answer, headers = await asyncio.to_thread(_post, url + path, body, key, args.timeout)
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        raise HistoryCommandError(f"the gateway answered {status}: {error.get('message', answer)}")
    text, usage = _answer_text(answer)
    left = (f"original · {record['model']} via {record['provider'] or '?'} · "
            f"{_num(record['response_time_ms'])} ms · {_num(record['completion_tokens'])} tokens",
            record["response"] or _calls(record["tool_calls"]))
    right = (f"replay · {body['model']} via {headers.get('x-labgate-provider', '?')} · {elapsed:.0f} ms · "
             f"{_num(usage.get('completion_tokens'))} tokens", text)
    out.write(side_by_side(left, right, width=shutil.get_terminal_size((120, 24)).columns))
    out.write(f"(replayed as request {headers.get('x-request-id', '?')})\n")
    return 0


def replay_body(record: dict[str, Any], *, model: str | None) -> dict[str, Any]:
    """The stored request as a body to send again (never streamed)."""
    endpoint = record["endpoint"]
    if endpoint not in _PATHS:
        raise HistoryCommandError(f"cannot replay a {endpoint} request side by side (chat and completions only)")
    if record["capture"] != "full" or record["messages"] is None:
        raise HistoryCommandError(f"request {record['request_id']} was stored without its content "
                                  "(store.capture: metadata): nothing to replay")
    parameters = {k: v for k, v in (record["parameters"] or {}).items() if k not in _NOT_REPLAYED}
    return {"model": model or record["model"], INPUT_KEYS[endpoint]: record["messages"], **parameters}


def _gateway(args: argparse.Namespace) -> tuple[str, str | None]:
    import os

    url, key_env = "http://127.0.0.1:4000", "LABGATE_API_KEY"
    if args.config:
        from labgate.config.load import load_config

        gateway = load_config(args.config).gateway
        host = "127.0.0.1" if gateway.server.host in ("0.0.0.0", "::") else gateway.server.host
        url = f"http://{host}:{gateway.server.port}"
        key_env = gateway.auth.master_key_env or key_env
    if args.api_key_env:
        key_env = args.api_key_env
    return (args.url or url).rstrip("/"), os.environ.get(key_env)


def _post(url: str, body: dict[str, Any], key: str | None, timeout: float) -> tuple[int, Any, dict[str, str]]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=orjson.dumps(body), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, orjson.loads(resp.read()), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        data = exc.read()
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = data.decode(errors="replace")
        return exc.code, parsed, {}
    except (urllib.error.URLError, OSError) as exc:
        raise HistoryCommandError(f"cannot reach the gateway at {url}: {getattr(exc, 'reason', exc)} "
                                  "(is `labgate serve` running? see --url)") from None


def _answer_text(answer: Any) -> tuple[str, dict[str, Any]]:
    usage = answer.get("usage") or {} if isinstance(answer, dict) else {}
    choice = (answer.get("choices") or [{}])[0] if isinstance(answer, dict) else {}
    message = choice.get("message")
    if isinstance(message, dict):
        return message.get("content") or _calls(message.get("tool_calls")), usage
    return choice.get("text") or "", usage


def _calls(calls: Any) -> str:
    if not calls:
        return ""
    return "\n".join(f"→ {c.get('function', {}).get('name')}({c.get('function', {}).get('arguments')})"
                     for c in calls if isinstance(c, dict))


def _num(value: Any) -> str:
    return "?" if value is None else f"{value:.0f}" if isinstance(value, float) else str(value)


def side_by_side(left: tuple[str, str], right: tuple[str, str], *, width: int) -> str:
    """Two titled texts in two columns, each wrapped to half the width."""
    column = max(20, (width - 3) // 2)

    def lines(title: str, text: str) -> list[str]:
        wrapped = [piece for para in (text or "").split("\n") or [""]
                   for piece in (textwrap.wrap(shown(para), column) or [""])]
        return [textwrap.shorten(shown(title), column, placeholder="…"), "-" * column, *wrapped]

    a, b = lines(*left), lines(*right)
    rows = max(len(a), len(b))
    a += [""] * (rows - len(a))
    b += [""] * (rows - len(b))
    return "".join(f"{x.ljust(column)} │ {y}".rstrip() + "\n" for x, y in zip(a, b, strict=True))
