"""The HTTP server against hostile and odd clients, over raw sockets on an ephemeral port.

Each test starts a real ``HttpServer`` (the gateway's own error envelopes, ``serve.error_response``)
on a loop in its own thread, and talks to it with blocking sockets that have timeouts, so a bug
fails instead of hanging. Times are bounded by the configured limits, never tight wall clocks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from labgate.server.http import HttpServer, Request, Response, ServerLimits
from labgate.server.limits import LOG_EVERY_S
from labgate.server.serve import error_response
from labgate.testing.gateway import LoopThread, config_from, gateway_in_thread

TIMEOUT = 5.0
SLACK_S = 2.0  # how late a deadline may be answered on a loaded machine


async def echo(request: Request) -> Response:
    return Response(200, [("content-type", "application/json")], orjson.dumps({
        "method": request.method, "path": request.path, "query": request.query,
        "headers": request.headers, "body": request.body.decode("latin-1"),
    }))


@dataclass
class Served:
    server: HttpServer
    port: int
    thread: LoopThread

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT, source_address=(source, 0))
        sock.settimeout(TIMEOUT)
        return sock

    def eventually(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        until = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < until, "condition not met in time"
            time.sleep(0.01)


@contextlib.contextmanager
def serving(handler: Callable[[Request], Awaitable[Response]] = echo, **limits: Any) -> Iterator[Served]:
    thread = LoopThread()
    server = HttpServer(handler, error_response=error_response, limits=ServerLimits(**limits))
    try:
        port = thread.run(server.start("127.0.0.1", 0))
        yield Served(server, port, thread)
    finally:
        thread.run(server.shutdown(1.0))
        thread.close()


@contextlib.contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    lock = threading.Lock()

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with lock:
                records.append(record)

    capture = Capture(logging.DEBUG)
    loggers = [logging.getLogger("labgate.server"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(capture)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


_pending: weakref.WeakKeyDictionary[socket.socket, bytearray] = weakref.WeakKeyDictionary()


def _read_until(sock: socket.socket, buffer: bytearray, size: int | None = None) -> bytes | None:
    """A line (``size`` None) or ``size`` bytes from ``buffer``, receiving more as needed; None at EOF."""
    while True:
        end = buffer.find(b"\n") + 1 if size is None else (size if len(buffer) >= size else 0)
        if end:
            data = bytes(buffer[:end])
            del buffer[:end]
            return data
        more = sock.recv(65536)
        if not more:
            return None
        buffer += more


def read_reply(sock: socket.socket, *, interim: list[int] | None = None) -> Reply | None:
    """The next final response on ``sock`` (1xx skipped, noted in ``interim``); None on a clean close."""
    buffer = _pending.setdefault(sock, bytearray())
    while True:
        line = _read_until(sock, buffer)
        if not line:
            return None
        status = int(line.split()[1])
        headers: dict[str, str] = {}
        while (field := _read_until(sock, buffer)) not in (b"\r\n", None):
            name, _, value = field.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            if interim is not None:
                interim.append(status)
            continue
        body = _read_until(sock, buffer, int(headers.get("content-length", "0")))
        return Reply(status, headers, body or b"")


def assert_closed(sock: socket.socket) -> None:
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(65536) == b""


def assert_envelope(reply: Reply | None, status: int, code: str) -> dict[str, Any]:
    """An OpenAI error envelope with this status and code, and the request id in body and header."""
    assert reply is not None, "the server closed without an answer"
    body = reply.json()
    assert (reply.status, reply.headers["content-type"], body["error"]["code"]) == (status, "application/json", code)
    assert body["request_id"] and body["request_id"] == reply.headers["x-request-id"]
    return body


def exchange(served: Served, raw: bytes) -> Reply | None:
    sock = served.connect()
    with sock:
        sock.sendall(raw)
        return read_reply(sock)


def warnings_about(records: list[logging.LogRecord], text: str) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == logging.WARNING and text in r.getMessage()]


def errors_in(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.ERROR]


# --- slowloris: the whole-request read deadline


def test_head_sent_a_line_at_a_time_gets_408_at_the_read_deadline() -> None:
    timeout = 1.0
    with captured_logs() as records, serving(request_read_timeout=timeout) as served:
        sock = served.connect()
        started = time.monotonic()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
        for i in range(int((timeout + SLACK_S) / 0.2)):  # a header line every 0.2 s: every read is "activity"
            if select.select([sock], [], [], 0.2)[0]:
                break  # the answer is there
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Drip-%d: x\r\n" % i)
        elapsed = time.monotonic() - started
        reply = read_reply(sock)
        assert_envelope(reply, 408, "request_timeout")
        assert timeout - 0.05 <= elapsed <= timeout + SLACK_S
        assert_closed(sock)
    assert warnings_about(records, "server.request_read_timeout_s") == [
        "a request from 127.0.0.1 was not complete after 1s (server.request_read_timeout_s): answered 408"]


def test_body_trickled_after_a_complete_head_gets_408() -> None:
    timeout = 1.0
    with serving(request_read_timeout=timeout) as served:
        sock = served.connect()
        started = time.monotonic()
        sock.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        with contextlib.suppress(OSError):
            for _ in range(int(timeout / 0.2) + 1):
                sock.sendall(b"x")
                time.sleep(0.2)
        reply = read_reply(sock)
        assert_envelope(reply, 408, "request_timeout")
        assert timeout - 0.05 <= time.monotonic() - started <= timeout + SLACK_S


def test_the_read_deadline_is_per_request_on_a_kept_alive_connection() -> None:
    timeout = 1.0
    with serving(request_read_timeout=timeout) as served:
        sock = served.connect()
        started = time.monotonic()
        while time.monotonic() - started < 2.5 * timeout:  # the connection outlives the deadline several times
            sock.sendall(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = read_reply(sock)
            assert reply is not None and reply.status == 200
            time.sleep(timeout / 3)
        sock.close()


def test_the_read_deadline_counts_from_the_request_not_from_the_connection() -> None:
    timeout = 1.0
    with serving(request_read_timeout=timeout, keepalive_timeout=10.0) as served:
        sock = served.connect()
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_reply(sock).status == 200  # type: ignore[union-attr]
        time.sleep(0.7 * timeout)  # idle: not part of the next request's time
        sock.sendall(b"GET /second HTTP/1.1\r\n")
        time.sleep(0.6 * timeout)  # the connection is now older than the deadline; the request is not
        sock.sendall(b"Host: t\r\n\r\n")
        reply = read_reply(sock)
        assert reply is not None and (reply.status, reply.json()["path"]) == (200, "/second")
        sock.close()


def test_blank_lines_between_requests_do_not_keep_a_connection_open() -> None:
    keepalive = 1.0
    with serving(keepalive_timeout=keepalive, request_read_timeout=30.0) as served:
        sock = served.connect()
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - started < keepalive + SLACK_S:
                sock.sendall(b"\r\n")  # llhttp skips these: no request ever begins
                time.sleep(0.1)
        assert_closed(sock)
        assert time.monotonic() - started <= keepalive + SLACK_S


def test_reads_paused_behind_a_long_answer_do_not_count_against_the_deadline() -> None:
    timeout = 1.0

    async def handler(request: Request) -> Response:
        if request.path == "/long":
            import asyncio
            await asyncio.sleep(2 * timeout)
        return await echo(request)

    with serving(handler, request_read_timeout=timeout) as served:
        sock = served.connect()
        # /long is answered for 2 s; /queued waits (reading paused); /partial's head arrives in two parts
        sock.sendall(b"GET /long HTTP/1.1\r\nHost: t\r\n\r\nGET /queued HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"GET /partial HTTP/1.1\r\n")
        assert [read_reply(sock).status for _ in range(2)] == [200, 200]  # type: ignore[union-attr]
        sock.sendall(b"Host: t\r\n\r\n")
        reply = read_reply(sock)
        assert reply is not None and (reply.status, reply.json()["path"]) == (200, "/partial")


def test_the_read_deadline_holds_again_once_pipelined_requests_are_answered() -> None:
    timeout = 0.5
    with serving(request_read_timeout=timeout, keepalive_timeout=30.0) as served:
        sock = served.connect()
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")  # reading paused
        assert [read_reply(sock).status for _ in range(2)] == [200, 200]  # type: ignore[union-attr]
        sock.sendall(b"GET /partial HTTP/1.1\r\n")  # and reading resumed: this one is on the clock
        assert_envelope(read_reply(sock), 408, "request_timeout")
        assert_closed(sock)


# --- connection caps


def test_connections_over_max_connections_get_503_then_close() -> None:
    with captured_logs() as records, serving(max_connections=3, max_connections_per_ip=100) as served:
        held = [served.connect(f"127.0.0.{i}") for i in (2, 3, 4)]
        served.eventually(lambda: served.server.admission.open == 3)
        for _ in range(5):
            refused = served.connect("127.0.0.5")
            body = assert_envelope(read_reply(refused), 503, "too_many_connections")
            assert "server.max_connections" in body["error"]["message"]
            assert_closed(refused)
            refused.close()
        for sock in held:  # the admitted ones are served
            sock.sendall(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_reply(sock).status == 200  # type: ignore[union-attr]
        held.pop().close()
        served.eventually(lambda: served.server.admission.open == 2)
        again = served.connect("127.0.0.5")
        again.sendall(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_reply(again).status == 200  # type: ignore[union-attr]
        for sock in [*held, again]:
            sock.close()
    assert LOG_EVERY_S > 1  # the five refusals fall in one interval: one warning
    assert len(warnings_about(records, "(server.max_connections)")) == 1


def test_connections_over_max_connections_per_ip_get_503_then_close() -> None:
    with captured_logs() as records, serving(max_connections=100, max_connections_per_ip=2) as served:
        held = [served.connect("127.0.0.2") for _ in range(2)]
        served.eventually(lambda: served.server.admission.open == 2)
        refused = served.connect("127.0.0.2")
        body = assert_envelope(read_reply(refused), 503, "too_many_connections")
        assert "server.max_connections_per_ip" in body["error"]["message"]
        assert_closed(refused)
        other = served.connect("127.0.0.3")  # another address is not affected
        other.sendall(b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_reply(other).status == 200  # type: ignore[union-attr]
        for sock in [*held, refused, other]:
            sock.close()
        served.eventually(lambda: served.server.admission.open == 0)
    assert len(warnings_about(records, "(server.max_connections_per_ip)")) == 1


def test_refusals_past_max_refusing_are_closed_without_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labgate.server.connection.MAX_REFUSING", 2)
    with serving(max_connections=1) as served:
        held = served.connect()
        served.eventually(lambda: served.server.admission.open == 1)
        answered = [served.connect() for _ in range(2)]  # refused and answered; left open, so they linger
        for sock in answered:
            assert_envelope(read_reply(sock), 503, "too_many_connections")
        served.eventually(lambda: served.server.admission.refusing == 2)
        dropped = served.connect()  # a third refusal meanwhile: closed at once
        with contextlib.suppress(ConnectionResetError):
            assert read_reply(dropped) is None
        for sock in answered:
            sock.close()
        served.eventually(lambda: served.server.admission.refusing == 0)
        again = served.connect()
        assert_envelope(read_reply(again), 503, "too_many_connections")
        for sock in (held, dropped, again):
            sock.close()


def test_many_half_requests_from_one_client_are_capped() -> None:
    with serving(max_connections=1000, max_connections_per_ip=20) as served:
        socks = [served.connect("127.0.0.9") for _ in range(40)]
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # never finished
        served.eventually(lambda: served.server.admission.open == 20)
        refused = 0
        for sock in socks[20:]:
            with contextlib.suppress(ConnectionResetError):
                reply = read_reply(sock)
                refused += reply is not None and reply.status == 503
            sock.close()
        assert (refused, served.server.admission.open) == (20, 20)
        for sock in socks[:20]:
            sock.close()


# --- memory: trailers, tiny chunks, unread answers


def test_trailer_fields_never_become_request_headers() -> None:
    with serving() as served:
        reply = exchange(served, b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"3\r\nabc\r\n0\r\nAuthorization: Bearer sk-smuggled\r\nX-Trailer: 1\r\n\r\n")
        assert reply is not None
        assert reply.json() == {"method": "POST", "path": "/t", "query": "", "body": "abc",
                                "headers": {"host": "t", "transfer-encoding": "chunked"}}


def test_a_trailer_authorization_is_not_accepted_as_auth_by_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_SECURITY_SERVER_KEY", "sk-master-trailer")
    config = config_from({}, gateway={"auth": {"master_key_env": "LABGATE_SECURITY_SERVER_KEY"}})
    with gateway_in_thread(config) as running:
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT)
        with sock:
            sock.sendall(b"GET /admin/config HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"0\r\nAuthorization: Bearer sk-master-trailer\r\n\r\n")
            reply = read_reply(sock)
            assert reply is not None and reply.status == 401
            sock.sendall(b"GET /admin/config HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-master-trailer\r\n\r\n")
            reply = read_reply(sock)
            assert reply is not None and reply.status == 200  # the same key as a header is accepted


def test_each_size_limit_is_warned_about_on_its_own() -> None:
    with captured_logs() as records, serving(max_body_bytes=10, max_header_bytes=1024) as served:
        assert_envelope(exchange(served, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n"), 413,
                        "request_too_large")
        assert_envelope(exchange(served, b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"v" * 1100 + b"\r\n\r\n"), 431,
                        "header_too_large")
    assert warnings_about(records, "was refused") == [  # within one interval, and neither hides the other
        "a request from 127.0.0.1 was refused with 413 (server.max_body_bytes)",
        "a request from 127.0.0.1 was refused with 431 (server.max_header_bytes)"]


def test_trailer_bytes_count_against_the_header_limit() -> None:
    with captured_logs() as records, serving(max_header_bytes=2048) as served:
        head = b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        many = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 90) for i in range(25))  # ~2.5 KB of trailer fields
        assert_envelope(exchange(served, head + many + b"\r\n"), 431, "header_too_large")
        # a trailer line that never ends: cut off once it passes the limit, not buffered without bound
        sock = served.connect()
        sock.sendall(head + b"X-Endless: ")
        sent = 0
        with contextlib.suppress(OSError):
            while sent < 4 * 1024 * 1024:
                sock.sendall(b"v" * 1024)
                sent += 1024
                if sent % 16384 == 0:
                    time.sleep(0.005)
        assert_envelope(read_reply(sock), 431, "header_too_large")
        sock.close()
    assert warnings_about(records, "(server.max_header_bytes)") == [
        "a request from 127.0.0.1 was refused with 431 (server.max_header_bytes)"]  # twice: logged once


def test_tiny_chunks_arrive_as_one_body() -> None:
    with serving(max_body_bytes=1 << 20) as served:
        data = os.urandom(3000).hex().encode()
        chunks = b"".join(b"2\r\n%s\r\n" % data[i:i + 2] for i in range(0, len(data), 2))
        reply = exchange(served, b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + chunks + b"0\r\n\r\n")
        assert reply is not None and reply.json()["body"] == data.decode()


def test_a_client_that_never_reads_a_whole_answer_is_cut_after_the_write_timeout() -> None:
    big = b"x" * (32 * 1024 * 1024)

    async def handler(request: Request) -> Response:
        return Response(200, [], big)

    with serving(handler, keepalive_timeout=0.5) as served:
        sock = served.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        served.eventually(lambda: served.server.inflight == 0 and not served.server.connections, 0.5 + SLACK_S + 2)
        sock.close()


# --- framing rules (RFC 9112)


def test_http_1_0_with_transfer_encoding_closes_after_the_message() -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.path)
        return await echo(request)

    with serving(handler) as served:
        sock = served.connect()
        sock.sendall(b"POST /first HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n"
                     b"GET /smuggled HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        reply = read_reply(sock)
        assert reply is not None and (reply.status, reply.headers["connection"]) == (200, "close")
        assert read_reply(sock) is None
        sock.close()
    assert seen == ["/first"]


def test_a_malformed_body_of_an_http_1_0_chunked_request_gets_400() -> None:
    """Its head makes it the connection's last request before its body is read; the body's error is still
    answered (only bytes after a complete last request go unanswered)."""
    with serving() as served:
        sock = served.connect()
        sock.sendall(b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        body = assert_envelope(read_reply(sock), 400, "invalid_request")
        assert body["error"]["message"].startswith("Malformed HTTP request: ")
        assert_closed(sock)


@pytest.mark.parametrize(("coding", "status", "code"), [
    (b"gzip, chunked", 501, "unsupported_framing"),
    (b"identity, chunked", 501, "unsupported_framing"),
    (b"x-custom ,chunked", 501, "unsupported_framing"),
    (b"gzip", 400, "invalid_request"),  # chunked must be last: llhttp refuses it
    (b"chunked, chunked", 400, "invalid_request"),
])
def test_transfer_codings_other_than_chunked_are_refused(coding: bytes, status: int, code: str) -> None:
    with serving() as served:
        assert_envelope(exchange(served, b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: " + coding
                                 + b"\r\n\r\n0\r\n\r\n"), status, code)


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nX: y\r\n\r\n",
])
def test_http_1_1_without_exactly_one_host_gets_400(head: bytes) -> None:
    with serving() as served:
        body = assert_envelope(exchange(served, head), 400, "invalid_request")
        assert "Host" in body["error"]["message"]


@pytest.mark.parametrize(("head", "status", "message"), [
    (b"GET / HTTP/1.1\r\n\r\n", 400, "An HTTP/1.1 request must have a Host header."),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "The request has more than one Host header."),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0 is not supported; use HTTP/1.1."),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12345678901234567890\r\n\r\n", 400,
     "Invalid Content-Length (20 digits)."),
    # 19 digits is still a length (too large for the limit), not a malformed one
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000000\r\n\r\n", 413,
     "The request body is 1000000000000000000 bytes; the limit is 1024."),
])
def test_framing_errors_say_what_is_wrong(head: bytes, status: int, message: str) -> None:
    with serving(max_body_bytes=1024) as served:
        reply = exchange(served, head)
        assert reply is not None and (reply.status, reply.json()["error"]["message"]) == (status, message)


def test_http_1_0_without_host_is_served() -> None:
    with serving() as served:
        reply = exchange(served, b"GET /old HTTP/1.0\r\n\r\n")
        assert reply is not None and reply.status == 200


@pytest.mark.parametrize("version", [b"2.0", b"0.9"])
def test_http_versions_other_than_1_x_get_505(version: bytes) -> None:
    with serving() as served:
        assert_envelope(exchange(served, b"GET / HTTP/" + version + b"\r\nHost: t\r\n\r\n"), 505,
                        "unsupported_framing")


def test_content_length_with_thousands_of_leading_zeros_gets_400() -> None:
    with captured_logs() as records, serving() as served:
        assert_envelope(exchange(served, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: " + b"0" * 5000
                                 + b"5\r\n\r\nhello"), 400, "invalid_request")
        reply = exchange(served, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 005\r\n\r\nhello")
        assert reply is not None and reply.json()["body"] == "hello"  # a few zeros are a valid length
    assert errors_in(records) == []


def test_upgrade_request_is_answered_then_the_connection_closes() -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.path)
        return await echo(request)

    with serving(handler) as served:
        sock = served.connect()
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                     b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        reply = read_reply(sock)
        assert reply is not None and (reply.status, reply.headers["connection"]) == (200, "close")
        assert read_reply(sock) is None
        sock.close()
    assert seen == ["/ws"]


@pytest.mark.parametrize("target", [b"http://[::1/x", b"http:///x", b"http://a:99999/x", b"http://"])
def test_malformed_absolute_form_target_gets_400(target: bytes) -> None:
    with captured_logs() as records, serving() as served:
        body = assert_envelope(exchange(served, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"), 400,
                               "invalid_request")
        assert "Malformed request target" in body["error"]["message"]
    assert errors_in(records) == []


# --- half-close


def test_a_client_that_half_closes_after_its_request_gets_the_answer() -> None:
    async def handler(request: Request) -> Response:
        import asyncio
        await asyncio.sleep(0.3)  # the EOF arrives while the handler runs
        return await echo(request)

    with serving(handler) as served:
        for request in (b"POST /half HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
                        b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n"):
            sock = served.connect()
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)  # nc -N
            interim: list[int] = []
            replies = []
            while (reply := read_reply(sock, interim=interim)) is not None:
                replies.append(reply)
            expected = [(200, "/half")] if b"/half" in request else [(200, "/a"), (200, "/b")]
            assert [(r.status, r.json()["path"]) for r in replies] == expected
            assert interim in ([], [100])  # the probe for a client that left: a 1xx clients skip
            sock.close()


def test_a_client_that_closed_and_left_is_still_noticed() -> None:
    import asyncio
    cancelled = threading.Event()

    async def handler(request: Request) -> Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return await echo(request)

    with serving(handler) as served:
        sock = served.connect()
        sock.sendall(b"POST /left HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        served.eventually(lambda: served.server.inflight == 1)
        sock.close()  # a FIN, like a half-close: only the reset to what the server sends next tells them apart
        assert cancelled.wait(SLACK_S + 2)
        served.eventually(lambda: served.server.inflight == 0)


# --- whatever the input: an envelope or a close, never a traceback


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n",
    b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\nHost: t\n\n",
    b"GET /\x7f HTTP/1.1\r\nHost: t\r\n\r\n",
    b"BREW / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
])
def test_malformed_requests_get_an_envelope_and_no_traceback(raw: bytes) -> None:
    with captured_logs() as records, serving() as served:
        reply = exchange(served, raw)
        if reply is not None:
            assert 400 <= reply.status < 600
            assert_envelope(reply, reply.status, reply.json()["error"]["code"])
    assert errors_in(records) == []


def test_limits_come_from_the_server_config() -> None:
    config = config_from({}, gateway={"server": {
        "request_read_timeout_s": 1, "max_connections": 50, "max_connections_per_ip": 1,
        "max_header_bytes": 2048}})
    with gateway_in_thread(config) as running:
        first = socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT)
        first.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")  # left unfinished
        second = socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT)
        assert_envelope(read_reply(second), 503, "too_many_connections")
        assert_envelope(read_reply(first), 408, "request_timeout")
        for sock in (first, second):
            sock.close()
        deadline = time.monotonic() + TIMEOUT
        while running.server.admission.open and time.monotonic() < deadline:
            time.sleep(0.01)
        third = socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT)
        third.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX: " + b"v" * 2100 + b"\r\n\r\n")
        assert_envelope(read_reply(third), 431, "header_too_large")
        third.close()


def test_the_servers_own_answers_name_the_clients_request_id() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("broke")

    with captured_logs() as records, serving(broken, max_body_bytes=10) as served:
        reply = exchange(served, b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-1\r\n\r\n")
        assert_envelope(reply, 500, "internal_error")
        assert reply is not None and reply.headers["x-client-request-id"] == "abc-1"
        reply = exchange(served, b"POST / HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-2\r\nContent-Length: 11\r\n\r\n")
        assert_envelope(reply, 413, "request_too_large")
        assert reply is not None and reply.headers["x-client-request-id"] == "abc-2"
    assert errors_in(records) == ["unhandled error answering GET /"]
