"""Property tests of the server's request framing, with h11 as the reference parser.

One server (the gateway's error envelopes, an echo handler) runs on a loop in a thread for the
module; each example opens a raw socket, sends bytes split at arbitrary boundaries, half-closes (so
an incomplete request ends in a close instead of a wait), and reads everything back.

- Valid requests (any method, target, header fields, a body framed by Content-Length or by chunks
  of random sizes, with trailer fields), pipelined and split anywhere: the handler sees exactly the
  generated method, path, query, headers and body, and so does h11 fed the same bytes.
- The same bytes damaged at random: every answer is a well-formed response, an error is a 4xx/5xx
  envelope with a request id, the connection then closes, nothing hangs, nothing is logged as an
  error; and whatever the server did serve, h11 reads as the same request (differential).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgate.server.http import HttpServer, Request, Response, ServerLimits
from labgate.server.serve import error_response
from labgate.testing.gateway import LoopThread

TIMEOUT = 5.0
MAX_BODY = 64 * 1024
MAX_HEADER = 16 * 1024
EXAMPLES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])

# header names the framing owns or that change what the server does with the connection
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te", "trailer",
           "keep-alive", "proxy-connection", "x-request-id"}
TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~"
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"
VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))


async def echo(request: Request) -> Response:
    return Response(200, [("content-type", "application/json")], orjson.dumps({
        "method": request.method, "path": request.path, "query": request.query,
        "headers": request.headers, "body": request.body.hex(),
    }))


@dataclass
class Served:
    port: int
    records: list[logging.LogRecord]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    records: list[logging.LogRecord] = []
    lock = threading.Lock()

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with lock:
                records.append(record)

    capture = Capture(logging.ERROR)
    loggers = [logging.getLogger("labgate.server"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(capture)
    thread = LoopThread()
    server = HttpServer(echo, error_response=error_response, limits=ServerLimits(
        max_body_bytes=MAX_BODY, max_header_bytes=MAX_HEADER, request_read_timeout=TIMEOUT))
    try:
        yield Served(thread.run(server.start("127.0.0.1", 0)), records)
    finally:
        thread.run(server.shutdown(1.0))
        thread.close()
        for logger in loggers:
            logger.removeHandler(capture)


# --- generating requests


@dataclass(frozen=True)
class Wire:
    """One request on the wire, and what a correct parser makes of it."""

    raw: bytes
    expected: dict[str, Any]


@st.composite
def requests(draw: st.DrawFn) -> Wire:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = "/" + draw(st.text(PATH_CHARS, max_size=30)).replace("%", "%25")
    query = draw(st.one_of(st.none(), st.text(PATH_CHARS + "?", max_size=20).map(lambda q: q.replace("%", "%25"))))
    target = path if query is None else f"{path}?{query}"
    names = st.text(TOKEN, min_size=1, max_size=12).filter(lambda n: n.lower() not in FRAMING)
    values = st.text(VALUE_CHARS, max_size=20).flatmap(
        lambda v: st.sampled_from([v, f"{v[:3]} {v[3:]}".strip()]))  # inner spaces, none at the ends
    fields = draw(st.lists(st.tuples(names, values), max_size=6))
    body = draw(st.binary(max_size=2000))
    chunked = draw(st.booleans())
    host = draw(st.sampled_from(["t", "example.com:8080", "127.0.0.1"]))
    at = draw(st.integers(0, len(fields)))
    fields = [*fields[:at], ("Host", host), *fields[at:]]
    if chunked:
        fields.append(("Transfer-Encoding", "chunked"))
        sizes: list[int] = []
        left = len(body)
        while left:
            size = draw(st.integers(1, max(1, min(left, 300))))
            sizes.append(size)
            left -= size
        pieces, offset = [], 0
        for size in sizes:
            ext = draw(st.sampled_from([b"", b";x=1", b";name"]))
            pieces.append(b"%x%s\r\n%s\r\n" % (size, ext, body[offset:offset + size]))
            offset += size
        trailers = draw(st.lists(st.tuples(names, values), max_size=2))
        framed = b"".join(pieces) + b"0\r\n" + b"".join(
            f"{n}: {v}\r\n".encode() for n, v in [*trailers, *draw(st.sampled_from([[], [("Authorization", "x")]]))]
        ) + b"\r\n"
    else:
        fields.append(("Content-Length", str(len(body))))
        framed = body
    headers: dict[str, str] = {}
    for name, value in fields:
        key = name.lower()
        headers[key] = value if key not in headers else f"{headers[key]}, {value}"
    raw = f"{method} {target} HTTP/1.1\r\n".encode() + b"".join(
        f"{n}: {v}\r\n".encode() for n, v in fields) + b"\r\n" + framed
    return Wire(raw, {"method": method, "path": path, "query": query or "", "headers": headers, "body": body.hex()})


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    return st.lists(st.integers(0, len(data)), max_size=6).map(lambda cuts: _cut(data, sorted(set(cuts))))


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# --- talking to the server


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, pieces: list[bytes]) -> tuple[list[Reply], bool]:
    """Send ``pieces`` (a pause between them), half-close, read every answer; (answers, closed cleanly)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # the server may answer an error and close before all is sent
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.001)
            sock.shutdown(socket.SHUT_WR)
        data = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while more := sock.recv(65536):  # a hang fails here, on the socket timeout
                data += more
    return parse_replies(bytes(data))


def parse_replies(data: bytes) -> tuple[list[Reply], bool]:
    """Responses in ``data`` (1xx skipped); the flag says the data ended exactly after the last one."""
    replies: list[Reply] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return replies, False
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, _ = (status_line + " ").split(" ", 2)
        assert version == "HTTP/1.1", status_line
        fields = dict(line.split(": ", 1) for line in lines)
        if 100 <= int(status) < 200:
            data = rest
            continue
        length = int(fields["content-length"])
        if len(rest) < length:
            return replies, False
        replies.append(Reply(int(status), fields, rest[:length]))
        data = rest[length:]
    return replies, True


def h11_view(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The requests h11 reads from ``raw`` as the handler would see them; the flag says h11 found an error."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER)
    conn.receive_data(raw)
    conn.receive_data(b"")
    seen: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                target = event.target.decode("latin-1")
                path, _, query = target.partition("?")
                headers: dict[str, str] = {}
                for name, value in event.headers:
                    key = name.decode("latin-1")
                    text = value.decode("latin-1")
                    headers[key] = text if key not in headers else f"{headers[key]}, {text}"
                current = {"method": event.method.decode(), "path": path, "query": query, "headers": headers}
                body = bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                seen.append({**current, "body": bytes(body).hex()})
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:  # HTTP/1.0 (or any non-1.1 version) without keep-alive
                    return seen, False
                conn.start_next_cycle()
                rest, _ = conn.trailing_data
                if rest[:1] in (b"\r", b"\n"):  # llhttp skips lone CRs/LFs before the next request line too;
                    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER)  # h11 only a CRLF
                    conn.receive_data(_single_spaced(rest.lstrip(b"\r\n")))
                    conn.receive_data(b"")
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return seen, False
    except h11.RemoteProtocolError:
        return seen, True


# --- properties


@EXAMPLES
@given(data=st.data(), batch=st.lists(requests(), min_size=1, max_size=4))
def test_valid_requests_split_anywhere_reach_the_handler_exactly(served: Served, data: st.DataObject,
                                                                 batch: list[Wire]) -> None:
    raw = b"".join(wire.raw for wire in batch)
    expected = [wire.expected for wire in batch]
    assert h11_view(raw) == (expected, False)  # the generator and the reference parser agree
    replies, clean = exchange(served.port, data.draw(splits(raw)))
    assert [(r.status, orjson.loads(r.body)) for r in replies] == [(200, e) for e in expected]
    assert clean
    assert served.records == []


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    raw = b"".join(wire.raw for wire in draw(st.lists(requests(), min_size=1, max_size=2)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        byte = draw(st.sampled_from([b"\r", b"\n", b" ", b"\x00", b":", b"0", b"f", b"\t", b"\x7f", b"\xff", b";",
                                     b"\r\n", b",", b"-"]))
        if kind == "insert":
            raw = raw[:at] + byte + raw[at:]
        elif kind == "delete":
            raw = raw[:at] + raw[at + 1:]
        elif kind == "replace":
            raw = raw[:at] + byte + raw[at + 1:]
        else:
            end = draw(st.integers(at, min(len(raw), at + 40)))
            raw = raw[:end] + raw[at:end] + raw[end:]
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data(), raw=damaged())
def test_damaged_requests_get_an_envelope_or_a_clean_close(served: Served, data: st.DataObject, raw: bytes) -> None:
    replies, clean = exchange(served.port, data.draw(splits(raw)))
    assert clean, "a response was cut short"
    served_requests = []
    for reply in replies:
        if reply.status == 200:
            served_requests.append(orjson.loads(reply.body))
            continue
        assert 400 <= reply.status < 600
        assert reply.headers["connection"] == "close"
        envelope = orjson.loads(reply.body)
        assert set(envelope) == {"error", "request_id"} and envelope["error"]["code"]
        assert envelope["request_id"] == reply.headers["x-request-id"]
        assert reply is replies[-1]  # an error ends the connection
    assert served.records == []
    # differential: what the server handed its handler, h11 reads from the same bytes, in the same order
    reference, _ = h11_view(_single_spaced(raw.lstrip(b"\r\n")))  # llhttp skips a lone CR or LF before a
    assert served_requests == reference[:len(served_requests)]          # request line; h11 a CRLF


def _single_spaced(raw: bytes) -> bytes:
    """Request lines with runs of spaces made single: RFC 9112 §3 lets a recipient split the request line on
    whitespace boundaries (llhttp does: ``GET  / HTTP/1.1`` is served); h11 wants exactly one SP."""
    return re.sub(rb"(?m)^([A-Za-z]+) +(\S+) +(HTTP/)", rb"\1 \2 \3", raw)


@pytest.mark.parametrize("version", [b"0.1", b"0.9", b"1.0"])
def test_the_reference_reads_a_request_of_any_version_and_stops_there(version: bytes) -> None:
    """h11 takes a non-1.1 request without keep-alive as the connection's last (found by the property above)."""
    raw = b"GET /x HTTP/" + version + b"\r\nhost: a\r\n\r\nGET /y HTTP/1.1\r\nhost: a\r\n\r\n"
    assert h11_view(raw) == ([{"method": "GET", "path": "/x", "query": "", "headers": {"host": "a"}, "body": ""}],
                             False)
