"""``labgate test-request``: one request through a running gateway, with its timing breakdown.

    labgate test-request --model m1 [--stream] [--url http://127.0.0.1:4000] [--key-env LABGATE_KEY]

Prints the time to connect, to the response head (first byte), to the first content
token (streams), the total, tokens per second, and the route labgate took (the
``x-labgate-provider``, ``-deployment`` and ``-attempts`` headers). Exit status 0 when
the gateway answered 2xx, 1 otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
import urllib.parse
from typing import Any

import orjson

from labgate.cli.style import shown

TIMEOUT_S = 120.0  # the whole request; a long generation may take a while
DEFAULT_URL = "http://127.0.0.1:4000"


def register(commands: Any) -> None:
    p = commands.add_parser("test-request", help="send one request and show its timing breakdown")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the gateway (default {DEFAULT_URL})")
    p.add_argument("--model", default="default", help="the model to ask (default: 'default')")
    p.add_argument("--stream", action="store_true", help="ask for a stream")
    p.add_argument("--prompt", default="Say hello in five words.")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--key-env", default="LABGATE_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default LABGATE_API_KEY; unset: no key)")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S)
    p.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    p.set_defaults(run=run)


def measure(url: str, body: dict[str, Any], *, key: str | None, timeout: float) -> dict[str, Any]:
    """Send one chat completion and time it; the breakdown (times in ms from the start)."""
    split = urllib.parse.urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    kind = http.client.HTTPSConnection if split.scheme == "https" else http.client.HTTPConnection
    conn = kind(split.hostname, split.port, timeout=timeout)
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    start = time.perf_counter()

    def ms() -> float:
        return round((time.perf_counter() - start) * 1000, 2)

    try:
        conn.connect()
        connected = ms()
        conn.request("POST", split.path.rstrip("/") + "/v1/chat/completions", orjson.dumps(body), headers)
        resp = conn.getresponse()
        head = ms()
        first_token = None
        chunks = completion_tokens = 0
        text = b""
        if body.get("stream") and resp.status < 300:
            while line := resp.readline():
                if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                    continue
                event = _json(line[5:])
                chunks += 1
                for choice in event.get("choices") or ():
                    if isinstance(choice, dict) and (choice.get("delta") or {}).get("content") and first_token is None:
                        first_token = ms()
                usage = event.get("usage")
                if isinstance(usage, dict):
                    completion_tokens = int(usage.get("completion_tokens") or 0)
        else:
            text = resp.read()
            usage = _json(text).get("usage")
            if isinstance(usage, dict):
                completion_tokens = int(usage.get("completion_tokens") or 0)
        total = ms()
    finally:
        conn.close()
    generating = (total - (first_token if first_token is not None else head)) / 1000
    result: dict[str, Any] = {
        "status": resp.status, "connect_ms": connected, "first_byte_ms": head, "first_token_ms": first_token,
        "total_ms": total, "completion_tokens": completion_tokens or None,
        "tokens_per_s": round(completion_tokens / generating, 1) if completion_tokens and generating > 0 else None,
        "chunks": chunks if body.get("stream") else None,
        "provider": resp.getheader("x-labgate-provider"), "deployment": resp.getheader("x-labgate-deployment"),
        "attempts": int(resp.getheader("x-labgate-attempts") or 0) or None,
        "request_id": resp.getheader("x-request-id"),
    }
    if resp.status >= 300:
        error = _json(text).get("error")
        result["error"] = error.get("message") if isinstance(error, dict) else text[:500].decode(errors="replace")
    return result


def _json(data: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def run(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.model, "max_tokens": args.max_tokens, "stream": args.stream,
                            "messages": [{"role": "user", "content": args.prompt}]}
    if args.stream:
        body["stream_options"] = {"include_usage": True}
    try:
        result = measure(args.url, body, key=os.environ.get(args.key_env) or None, timeout=args.timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(f"labgate test-request: {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(report(result))
    return 0 if result["status"] < 300 else 1


def report(r: dict[str, Any]) -> str:
    def cell(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value}{unit}"

    lines = [f"status        {r['status']}   request {shown(str(r['request_id']))}",
             f"route         {shown(str(r['deployment']))} (provider {shown(str(r['provider']))}, "
             f"{cell(r['attempts'])} attempt(s))",
             f"connect       {r['connect_ms']} ms",
             f"first byte    {r['first_byte_ms']} ms",
             f"first token   {cell(r['first_token_ms'], ' ms')}",
             f"total         {r['total_ms']} ms",
             f"tokens        {cell(r['completion_tokens'])} ({cell(r['tokens_per_s'], ' tokens/s')})"]
    if "error" in r:
        lines.append(f"error         {shown(str(r['error']))}")
    return "\n".join(lines)
