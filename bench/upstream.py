"""A fast fake OpenAI upstream for benchmarks: a raw asyncio protocol on uvloop and httptools.

The provider simulator in :mod:`labgate.testing` is the right upstream for
tests (faults, latency, every wire detail) but tops out near 11k req/s, which
would make it the bottleneck of a gateway benchmark. This one does almost
nothing per request, so the gateway in front of it is what gets measured:

- ``POST …/chat/completions`` without ``"stream": true`` → one fixed, small
  ``chat.completion`` body (keep-alive, Content-Length, one write). The request
  body is not parsed on this path: only searched for ``"stream"``.
- with ``"stream": true`` → an SSE stream (chunked transfer coding): the role
  chunk, ``max_tokens`` content chunks (default ``--chunks``), the finish
  chunk, a usage chunk when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``. A model whose name contains ``paced`` waits
  ``--chunk-delay-ms`` before each content chunk; any other model is *burst*:
  every event is written at once, each in its own ``write`` (so in its own
  TCP segment under TCP_NODELAY; the reader may still receive several in one
  read, as from a real engine that is faster than the network path).
- ``GET …/models`` → the model list; anything else → an OpenAI 404 envelope.

Run: ``python bench/upstream.py [--port 0]``; it prints
``upstream listening on http://HOST:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections import deque

import httptools
import orjson

try:
    import uvloop
except ImportError:  # still runs, slower; the harness says which loop it got
    uvloop = None  # type: ignore[assignment]

_CREATED = 1_700_000_000
_COMPLETION = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": _CREATED, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
})
_MODELS = orjson.dumps({"object": "list", "data": [
    {"id": name, "object": "model", "created": _CREATED, "owned_by": "bench"} for name in ("bench", "bench-paced")]})
_NOT_FOUND = orjson.dumps({"error": {"message": "no such route on the bench upstream",
                                     "type": "invalid_request_error", "param": None, "code": "not_found"}})
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
             b"transfer-encoding: chunked\r\n")
_LAST_CHUNK = b"0\r\n\r\n"


def _whole(status: bytes, body: bytes, *, close: bool) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


def _chunk(payload: dict[str, object] | bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n" % len(event) + event + b"\r\n"


def _delta(delta: dict[str, object], finish: str | None = None) -> bytes:
    return _chunk({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": _CREATED,
                   "model": "bench", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                  "finish_reason": finish}]})


_ROLE = _delta({"role": "assistant", "content": ""})
_TOKEN = _delta({"content": "tok "})
_FINISH = _delta({}, "stop")
_DONE = _chunk(b"[DONE]")
_RESPONSES = {close: {
    "completion": _whole(b"200 OK", _COMPLETION, close=close),
    "models": _whole(b"200 OK", _MODELS, close=close),
    "not_found": _whole(b"404 Not Found", _NOT_FOUND, close=close),
} for close in (False, True)}


def _usage(chunks: int) -> bytes:
    return _chunk({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": _CREATED,
                   "model": "bench", "choices": [],
                   "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}})


class _Upstream(asyncio.Protocol):
    """One client connection; requests are answered in order."""

    def __init__(self, chunks: int, delay: float) -> None:
        self._chunks = chunks
        self._delay = delay
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._queue: deque[tuple[bytes, bytes, bool]] = deque()
        self._streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        url, body = self._url, b"".join(self._body)
        self._url, self._body = b"", []
        request = (url, body, not self._parser.should_keep_alive())
        if self._streaming:
            self._queue.append(request)
        else:
            self._answer(*request)

    def _answer(self, url: bytes, body: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        canned = _RESPONSES[close]
        path = url.partition(b"?")[0]
        if path.endswith(b"/chat/completions"):
            if b'"stream":true' in body or b'"stream": true' in body:
                self._streaming = True
                asyncio.get_running_loop().create_task(self._stream(body, close))
                return
            transport.write(canned["completion"])
        elif path.endswith(b"/models"):
            transport.write(canned["models"])
        else:
            transport.write(canned["not_found"])
        if close:
            transport.close()

    async def _stream(self, body: bytes, close: bool) -> None:
        try:
            request = orjson.loads(body)
            tokens = request.get("max_tokens")
            count = tokens if isinstance(tokens, int) and tokens > 0 else self._chunks
            options = request.get("stream_options")
            usage = isinstance(options, dict) and bool(options.get("include_usage"))
            delay = self._delay if "paced" in str(request.get("model", "")) else 0.0
            await self._events(count, usage=usage, delay=delay, close=close)
        finally:
            self._streaming = False
        while self._queue and not self._streaming and self._transport is not None:
            self._answer(*self._queue.popleft())

    async def _events(self, count: int, *, usage: bool, delay: float, close: bool) -> None:
        head = _SSE_HEAD + (b"connection: close\r\n" if close else b"") + b"\r\n"
        transport = self._transport
        if transport is None:
            return
        transport.write(head + _ROLE)
        for _ in range(count):
            if delay:
                await asyncio.sleep(delay)
                transport = self._transport
                if transport is None:
                    return
            transport.write(_TOKEN)
        transport.write(_FINISH)
        if usage:
            transport.write(_usage(count))
        transport.write(_DONE + _LAST_CHUNK)
        if close:
            transport.close()


async def serve(host: str, port: int, *, chunks: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Upstream(chunks, delay_ms / 1000), host, port,
                                      backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"upstream listening on http://{host}:{bound} (loop: {'uvloop' if uvloop else 'asyncio'})", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream without max_tokens")
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0,
                        help="wait before each content chunk for models named *paced*")
    args = parser.parse_args(argv)
    runner = uvloop.run if uvloop is not None else asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, chunks=args.chunks, delay_ms=args.chunk_delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
