"""Micro-benchmarks of the hot path, in ns per operation, so a regression in one piece is visible.

    .venv/bin/python bench/micro.py [--quick] [--filter TEXT] [--json]

Each case is a small closure timed with ``time.perf_counter_ns`` in loops:
a warm-up run, then ``--repeat`` timed runs of N calls each (N calibrated so
one run takes ~``--target-ms``); it prints the best run's ns/op (the least
disturbed by the rest of the machine) and the median run's. Numbers are for
comparing with earlier runs on the same machine; nothing here passes or fails
on time.

Cases: route resolution (``RouteTable.resolve``: exact, alias, pattern,
provider/model), body parse and rewrite (``parse_chat``, ``adapt_body``,
``orjson.dumps``), the OpenAI stream tap (``SSEBuffer.feed`` and
``OpenAICompatibleAdapter._tap`` over a 20-chunk stream), Anthropic
translation (request, response, and ``StreamTranslator.feed`` over a
recorded event stream), the access-log record (``RequestRecord.as_log`` + orjson), the
metrics count (``Metrics.observe``: a whole answer, a stream) and the response cache (the key's
hash, a memory hit through ``Cache.get``, a whole answer replayed as a stream).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from labgate.providers.anthropic.stream import StreamTranslator
from labgate.providers.anthropic.translate import chat_request_to_messages, message_to_chat_completion
from labgate.providers.base import StreamInfo, Usage
from labgate.providers.openai_compat.adapter import OpenAICompatibleAdapter
from labgate.providers.openai_compat.quirks import PRESETS, adapt_body
from labgate.providers.registry import TYPES
from labgate.providers.sse import SSEBuffer
from labgate.record import RequestRecord
from labgate.routing.table import RouteTable
from labgate.server.openai import parse_chat
from labgate.state.cache import cache_for
from labgate.state.entry import Entry
from labgate.state.keys import key_hash
from labgate.state.replay import replay
from labgate.telemetry.metrics import Metrics
from labgate.testing.gateway import config_from


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    run: Callable[[], object]
    unit: str = "op"  # what one call is (a stream is many events)


# ---------------------------------------------------------------- inputs

CHAT_BODY = orjson.dumps({
    "model": "coder", "temperature": 0.2, "max_completion_tokens": 256, "user": "bench",
    "messages": [
        {"role": "system", "content": "You are a careful assistant. Answer briefly."},
        {"role": "user", "content": "Write a Python function that reverses a string."},
        {"role": "assistant", "content": "def rev(s):\n    return s[::-1]"},
        {"role": "user", "content": "Now make it handle None and explain in one line."},
    ]})
CHAT = orjson.loads(CHAT_BODY)
TOOLS_CHAT = {**CHAT, "tools": [{"type": "function", "function": {
    "name": "run_python", "description": "Run Python code",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}],
    "tool_choice": "auto"}


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "qwen2.5-coder:7b",
        "system_fingerprint": "fp_bench", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                       "finish_reason": finish}]}) + b"\n\n"


# What an OpenAI-compatible engine sends for 20 tokens with include_usage: role, 20 deltas,
# finish, usage (choices: []), [DONE] — one network read per event.
OPENAI_STREAM = [
    _openai_chunk({"role": "assistant", "content": ""}),
    *(_openai_chunk({"content": f"tok{i} "}) for i in range(20)),
    _openai_chunk({}, "stop"),
    b"data: " + orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
                              "model": "qwen2.5-coder:7b", "choices": [],
                              "usage": {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}}) + b"\n\n",
    b"data: [DONE]\n\n",
]
OPENAI_EVENTS = SSEBuffer().feed(b"".join(OPENAI_STREAM))


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


# A recorded-shape Anthropic stream: 20 text deltas, one network read per event.
ANTHROPIC_STREAM = [
    _sse("message_start", {"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 1}}}),
    _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
    _sse("ping", {"type": "ping"}),
    *(_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": f"tok{i} "}}) for i in range(20)),
    _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 20}}),
    _sse("message_stop", {"type": "message_stop"}),
]
ANTHROPIC_MESSAGE = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
    "content": [{"type": "text", "text": "def rev(s):\n    return None if s is None else s[::-1]"},
                {"type": "tool_use", "id": "toolu_1", "name": "run_python", "input": {"code": "print(rev('ab'))"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 40, "output_tokens": 30, "cache_read_input_tokens": 12}}


# ---------------------------------------------------------------- cases


def _route_table() -> RouteTable:
    config = config_from(
        providers={
            "ollama": {"type": "ollama", "priority": 1, "models": [
                "llama3.1:8b", {"name": "qwen2.5-coder:7b", "alias": "coder"}, *(f"extra-{i}:7b" for i in range(30))]},
            "vllm": {"type": "vllm", "base_url": "http://127.0.0.1:8001/v1", "priority": 5, "models": [
                {"name": "Qwen/Qwen2.5-7B-Instruct", "alias": "qwen-7b"}, "llama3.1:8b"]},
        },
        mappings={"routing": {
            "patterns": [{"pattern": "mistral*", "provider": "ollama"}, {"pattern": "*:13b", "provider": "vllm"}],
            "aliases": {"fast": "coder"},
            "exact_matches": {"gpt-local": {"provider": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct",
                                            "fallback_chain": ["ollama/llama3.1:8b"]}}}})
    # the table only stores adapters; it never calls them
    return RouteTable(config, {name: object() for name in config.providers})  # type: ignore[misc]


def cases() -> list[Case]:
    table = _route_table()
    resolve = table.resolve
    for name in ("coder", "fast", "mistral-7b", "ollama/llama3.1:8b"):
        resolve(name)  # glob and provider/model routes are made once, then cached
    quirks_ollama, quirks_plain = PRESETS["ollama"], PRESETS["openai_compatible"]
    tap = OpenAICompatibleAdapter._tap
    whole_stream = b"".join(OPENAI_STREAM)

    def feed_per_event() -> None:
        buffer = SSEBuffer()
        for chunk in OPENAI_STREAM:
            buffer.feed(chunk)

    def feed_1k_reads() -> None:
        buffer = SSEBuffer()
        for i in range(0, len(whole_stream), 1024):
            buffer.feed(whole_stream[i:i + 1024])

    def tap_stream() -> None:
        info = StreamInfo()
        buffer = SSEBuffer()
        for chunk in OPENAI_STREAM:
            tap(buffer.feed(chunk), info, strip_usage=True)

    def parse_rewrite_dump() -> bytes:
        return orjson.dumps(adapt_body(parse_chat(CHAT_BODY), model="qwen2.5-coder:7b", quirks=quirks_plain))

    def anthropic_stream() -> None:
        translator = StreamTranslator(StreamInfo(), include_usage=True, created=1_700_000_000, where="provider 'a'")
        for chunk in ANTHROPIC_STREAM:
            translator.feed(chunk)

    record = RequestRecord("req-0123456789abcdef", "chat", client_ip="127.0.0.1", key_id="key-0123456789ab",
                           model="coder", provider="ollama", deployment="ollama/qwen2.5-coder:7b", attempts=1,
                           first_byte=time.perf_counter(), finished=time.perf_counter(),
                           usage=Usage(40, 20), finish_reason="stop")
    answered, streamed = (RequestRecord("req-0123456789abcdef", "chat", model="coder", stream=stream,
                                        provider="ollama", deployment="ollama/qwen2.5-coder:7b", attempts=1,
                                        usage=Usage(40, 20)) for stream in (False, True))
    answered.finished = answered.first_byte = answered.started + 1.3
    streamed.first_byte = streamed.first_token = streamed.started + 0.08
    streamed.finished = streamed.started + 1.3
    metrics = Metrics()
    hit, replayed = _cache_cases()

    return [
        Case("route.resolve exact (provider's model)", lambda: resolve("coder")),
        Case("route.resolve alias", lambda: resolve("fast")),
        Case("route.resolve exact_matches entry", lambda: resolve("gpt-local")),
        Case("route.resolve pattern (cached)", lambda: resolve("mistral-7b")),
        Case("route.resolve provider/model (cached)", lambda: resolve("ollama/llama3.1:8b")),
        Case("parse_chat (4 messages)", lambda: parse_chat(CHAT_BODY)),
        Case("adapt_body openai_compatible (model only)",
             lambda: adapt_body(CHAT, model="qwen2.5-coder:7b", quirks=quirks_plain)),
        Case("adapt_body ollama (rename+drop)", lambda: adapt_body(CHAT, model="qwen2.5-coder:7b",
                                                                     quirks=quirks_ollama)),
        Case("orjson.dumps chat body", lambda: orjson.dumps(CHAT)),
        Case("parse_chat + adapt_body + orjson.dumps", parse_rewrite_dump),
        Case("SSEBuffer.feed, 24 events one read each", feed_per_event, "stream"),
        Case("SSEBuffer.feed, 24 events in 1 KiB reads", feed_1k_reads, "stream"),
        Case("OpenAI tap: feed + _tap, 24 events", tap_stream, "stream"),
        Case("anthropic chat_request_to_messages", lambda: chat_request_to_messages(
            TOOLS_CHAT, model="claude-x", default_max_tokens=1024, stream=False)),
        Case("anthropic message_to_chat_completion", lambda: message_to_chat_completion(
            ANTHROPIC_MESSAGE, created=1_700_000_000, where="provider 'a'")),
        Case("anthropic StreamTranslator.feed, 26 events", anthropic_stream, "stream"),
        Case("RequestRecord.as_log + orjson.dumps",
             lambda: orjson.dumps(record.as_log(), option=orjson.OPT_APPEND_NEWLINE)),
        Case("Metrics.observe, whole answer", lambda: metrics.observe(answered)),
        Case("Metrics.observe, stream", lambda: metrics.observe(streamed)),
        Case("cache key_hash (4-message chat body)", lambda: key_hash("chat", "ollama/qwen2.5-coder:7b", CHAT)),
        Case("cache memory hit: Cache.get", hit),
        Case("cache replay: whole chat answer as a stream", replayed),
    ]


def _cache_cases() -> tuple[Callable[[], object], Callable[[], object]]:
    """A memory hit through ``Cache.get`` (its coroutine never suspends: driven by hand), and a replay."""
    config = config_from({"p": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                "models": ["coder"]}}, gateway={"cache": {"nondeterministic": "cache"}})
    cache = cache_for(config)
    assert cache is not None
    route = RouteTable(config, {"p": TYPES["openai_compatible"].build(config.providers["p"], "p")}).resolve("coder")
    answer = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "coder",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! " * 40},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 40, "completion_tokens": 80, "total_tokens": 120}})
    key = cache.default.prefix + key_hash("chat", "p/coder", CHAT)
    entry = Entry(answer, "openai", "chat", time.time(), "stop", Usage(40, 80), "p", "p/coder")
    cache.entries.put_now(key, entry.encode(), 3600)  # type: ignore[attr-defined]

    def hit() -> object:
        record = RequestRecord("req-0123456789abcdef", "chat")
        body = dict(CHAT)
        record.payload = body
        coroutine = cache.get(route, record, body)
        try:
            coroutine.send(None)
        except StopIteration as done:
            assert done.value is not None
            return done.value
        raise RuntimeError("a memory hit suspended")

    doc = orjson.loads(answer)
    return hit, lambda: replay(doc, dialect="openai", endpoint="chat", include_usage=True)


# ---------------------------------------------------------------- timing


def _loop(run: Callable[[], object], number: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(number):
        run()
    return time.perf_counter_ns() - start


def measure(case: Case, *, target_ns: int, repeat: int) -> tuple[float, float, int]:
    """(best ns/op, median ns/op, calls per run)."""
    number = 1
    while True:  # calibrate (doubles as the warm-up)
        elapsed = _loop(case.run, number)
        if elapsed >= target_ns // 4 or number >= 1 << 24:
            break
        number *= 2
    number = max(1, int(number * target_ns / max(elapsed, 1)))
    runs = [_loop(case.run, number) / number for _ in range(repeat)]
    return min(runs), statistics.median(runs), number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: short runs, 3 repeats")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=50.0, help="length of one timed run")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.target_ms = 3, 5.0
    results = []
    selected = [c for c in cases() if args.filter.lower() in c.name.lower()]
    if not selected:
        print(f"micro: no case matches {args.filter!r}", file=sys.stderr)
        return 2
    width = max(len(c.name) for c in selected)
    if not args.json:
        print(f"{'case'.ljust(width)}  {'best ns':>10}  {'median ns':>10}  per")
    for case in selected:
        best, median, number = measure(case, target_ns=int(args.target_ms * 1e6), repeat=args.repeat)
        results.append({"case": case.name, "best_ns": round(best, 1), "median_ns": round(median, 1),
                        "per": case.unit, "calls_per_run": number})
        if not args.json:
            print(f"{case.name.ljust(width)}  {best:>10,.0f}  {median:>10,.0f}  ns/{case.unit}", flush=True)
    if args.json:
        sys.stdout.write(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
