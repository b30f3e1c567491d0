"""A streaming load client: time to first byte and whole-stream rate for SSE chat completions.

wrk measures whole responses only, so streams get this small client: ``-c``
keep-alive connections on uvloop, each sending its next request as soon as the
previous stream has ended (closed loop, like wrk). Per stream it records

- TTFB: from just before the request is written to the first *body* byte
  (the first SSE event; response headers alone do not count), and
- the whole stream: from the same start to the terminating zero-length chunk,
  and checks the status is 200 and the body ends with ``data: [DONE]``.

Accuracy: timestamps are taken in Python callbacks (``perf_counter_ns`` in
httptools' ``on_body``), so each carries this client's own event-loop delay:
~10–30 µs when the client is lightly loaded (the paced leg), up to a few
hundred µs when 16 burst streams keep it busy. Direct and gateway legs use the
same client on the same core, so the *added* TTFB is less biased than either
absolute number. Streams/s counts streams that completed inside the measured
window (after ``--warmup``), divided by the window.

Prints one JSON line: ``{"streams", "seconds", "errors", "ttfb_us": {p50,p90,p99},
"stream_us": {p50,p90,p99}, "first_error"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httptools
import orjson

try:
    import uvloop
except ImportError:
    uvloop = None  # type: ignore[assignment]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``run_one`` sends a request and waits for the whole stream."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] | None = None
        self.first_body = 0
        self.tail = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done is not None and not self.done.done():
                self.done.set_exception(exc)

    def on_body(self, body: bytes) -> None:
        if not self.first_body:
            self.first_body = time.perf_counter_ns()
        self.tail = (self.tail + body)[-64:]

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def run_one(self, request: bytes) -> tuple[int, int, int]:
        """(status, ns to first body byte, ns to end) for one stream."""
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.first_body, self.tail = 0, b""
        start = time.perf_counter_ns()
        self.transport.write(request)
        await self.done
        end = time.perf_counter_ns()
        status = self.parser.get_status_code()
        if status == 200 and not self.tail.rstrip().endswith(b"data: [DONE]"):
            raise ConnectionError("stream ended without data: [DONE]")
        if not self.first_body:
            raise ConnectionError("stream had no body")
        return status, self.first_body - start, end - start


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99)}


async def _worker(host: str, port: int, request: bytes, *, measure_from: int, stop_at: int,
                  ttfb: list[int], whole: list[int], errors: list[str]) -> None:
    loop = asyncio.get_running_loop()
    conn: _Connection | None = None
    while time.perf_counter_ns() < stop_at:
        try:
            if conn is None or conn.lost:
                _, conn = await loop.create_connection(_Connection, host, port)
            status, first, end = await conn.run_one(request)
        except (OSError, ConnectionError, httptools.HttpParserError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            conn = None
            await asyncio.sleep(0.01)
            continue
        finished = time.perf_counter_ns()
        if status != 200:
            errors.append(f"HTTP {status}")
        elif measure_from <= finished <= stop_at:
            ttfb.append(first)
            whole.append(end)
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def measure(url: str, body: bytes, headers: list[str], *, concurrency: int, duration: float,
                  warmup: float) -> dict[str, object]:
    parsed = httptools.parse_url(url.encode())
    host, port, path = parsed.host.decode(), parsed.port or 80, parsed.path.decode()
    head = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", "content-type: application/json",
            f"content-length: {len(body)}", *headers]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    now = time.perf_counter_ns()
    measure_from = now + int(warmup * 1e9)
    stop_at = measure_from + int(duration * 1e9)
    ttfb: list[int] = []
    whole: list[int] = []
    errors: list[str] = []
    await asyncio.gather(*(_worker(host, port, request, measure_from=measure_from, stop_at=stop_at,
                                   ttfb=ttfb, whole=whole, errors=errors) for _ in range(concurrency)))
    return {"streams": len(whole), "seconds": duration, "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "ttfb_us": _percentiles(ttfb), "stream_us": _percentiles(whole)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="the JSON request body (with \"stream\": true)")
    parser.add_argument("--header", action="append", default=[], help="'name: value', repeatable")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring")
    args = parser.parse_args(argv)
    runner = uvloop.run if uvloop is not None else asyncio.run
    result = runner(measure(args.url, args.body.encode(), args.header, concurrency=args.concurrency,
                            duration=args.duration, warmup=args.warmup))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
