"""Property tests for the pooled connection's parser, with h11 as the reference.

An upstream emits a response (valid, or mutated into anything) split at
arbitrary points. Whatever it sends:

- the exchange ends (an answer or one of our errors), never a hang;
- a valid response is parsed exactly: status, headers and body as h11 reads them;
- a connection goes back to the pool only when what arrived was exactly one
  complete response and nothing after it (h11 agrees it is complete, with no
  trailing data): a dirty connection is never reused.

Most examples drive :class:`Connection` directly through a scripted transport
(every split is exactly one ``data_received``); one test sends them over a
real socket from the hostile upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import h11
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from labgate.errors import LabgateError, UpstreamError
from labgate.providers.http import HttpPool
from labgate.testing.hostile import HostileUpstream, Received, Step, marked
from labgate.testing.scripted import Scripted


@dataclass
class Outcome:
    answer: tuple[int, dict[str, str], bytes] | None
    error: LabgateError | None
    pooled: bool


def exchange(segments: Sequence[bytes], *, eof: bool = True) -> Outcome:
    """Send one request on a fresh connection and feed it ``segments``, one read each."""
    loop = asyncio.new_event_loop()
    try:
        wire = Scripted(loop)
        waiter = wire.send()
        wire.feed(*segments)
        pooled = wire.pooled
        conn = wire.conn
        if eof and not waiter.done() and not wire.transport.closing:
            conn.eof_received()
        if not conn.lost:
            conn.connection_lost(None)
        assert waiter.done(), "the exchange must end once the connection does"
        error = waiter.exception()
        if error is not None:
            assert isinstance(error, LabgateError), repr(error)
            return Outcome(None, error, pooled)
        status, headers, body = waiter.result()
        assert isinstance(body, bytes)
        return Outcome((status, dict(headers), body), None, pooled)
    finally:
        loop.close()


# A status line whose reason phrase holds a control character: llhttp accepts it (and the pool
# never reads the reason), h11 refuses it, so the reference cannot judge such an exchange.
_ODD_REASON = re.compile(rb"(?m)^HTTP/\d\.\d \d{3} [^\r\n]*[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def reference(data: bytes) -> tuple[tuple[int, dict[str, str], bytes] | None, bool]:
    """h11's reading of ``data`` as the answer to ``scripted.REQUEST``: (the answer or None, nothing follows it)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/x", headers=[("host", "up"), ("content-length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    status, body = 0, b""
    headers: dict[str, str] = {}
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None, False
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {}
                for name, value in event.headers:
                    key = name.decode("latin-1")
                    text = value.decode("latin-1")
                    headers[key] = text if key not in headers else f"{headers[key]}, {text}"
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                trailing, _ = conn.trailing_data
                # llhttp (like RFC 9112's robustness rule for servers) skips empty lines between
                # messages: a CR or LF cannot start an answer, so it cannot desync the connection.
                return (status, headers, body), not bytes(trailing).strip(b"\r\n")
    except h11.RemoteProtocolError:
        return None, False


# --- generated responses


NAMES = st.from_regex(r"x-[a-z0-9-]{1,12}", fullmatch=True)
VALUES = st.from_regex(r"[!-~]([ !-~]{0,30}[!-~])?", fullmatch=True)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[str, str]], bytes, bool]:
    """(wire bytes, status, headers, body, keep-alive)"""
    status = draw(st.sampled_from([200, 201, 204, 400, 401, 404, 429, 500, 503, 529]))
    headers = draw(st.lists(st.tuples(NAMES, VALUES), max_size=8))
    body = b"" if status == 204 else draw(st.binary(max_size=300))
    chunked = status != 204 and draw(st.booleans())
    close = draw(st.booleans())
    lines = [f"HTTP/1.1 {status} Reason"] + [f"{name}: {value}" for name, value in headers]
    if close:
        lines.append("connection: close")
    if chunked:
        lines.append("transfer-encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 64), max_size=10))
        pieces, rest = [], body
        for size in sizes:
            if rest:
                pieces.append(rest[:size])
                rest = rest[size:]
        if rest:
            pieces.append(rest)
        payload = b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    else:
        if status != 204:
            lines.append(f"content-length: {len(body)}")
        payload = body
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" if draw(st.booleans()) else b""
    wire = interim + ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    return wire, status, headers, body, not close


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = sorted(draw(st.sets(st.integers(0, len(data)), max_size=12)))
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def split_with(data: st.DataObject, wire: bytes) -> list[bytes]:
    return data.draw(splits(wire))


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(response=responses(), data=st.data())
def test_a_valid_response_in_any_split_is_parsed_exactly_as_h11_reads_it(
        response: tuple[bytes, int, list[tuple[str, str]], bytes, bool], data: st.DataObject) -> None:
    wire, status, headers, body, keep = response
    outcome = exchange(split_with(data, wire))
    expected, clean = reference(wire)
    assert expected is not None and clean
    assert outcome.error is None
    assert outcome.answer is not None
    assert (outcome.answer[0], outcome.answer[2]) == (expected[0], expected[2]) == (status, body)
    for name, _ in headers:
        assert outcome.answer[1][name] == expected[1][name]
    assert outcome.pooled == keep


JUNK = st.one_of(
    st.binary(min_size=1, max_size=40).filter(lambda b: b[:1] not in (b"\r", b"\n")),
    st.just(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"),
    st.just(b"HTTP/1.1 200 OK\r\ncontent-le"),
)


@SETTINGS
@given(response=responses(), junk=JUNK, data=st.data())
def test_bytes_after_a_complete_response_deliver_it_and_never_pool_the_connection(
        response: tuple[bytes, int, list[tuple[str, str]], bytes, bool], junk: bytes, data: st.DataObject) -> None:
    wire, status, _, body, _ = response
    outcome = exchange(split_with(data, wire + junk))
    assert not outcome.pooled
    assert outcome.answer is not None  # every generated response is self-delimited: it stands
    assert (outcome.answer[0], outcome.answer[2]) == (status, body)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    wire = draw(responses())[0]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        at = draw(st.integers(0, max(len(wire) - 1, 0)))
        if kind == "flip" and wire:
            wire = wire[:at] + bytes([draw(st.integers(0, 255))]) + wire[at + 1:]
        elif kind == "insert":
            wire = wire[:at] + draw(st.binary(min_size=1, max_size=8)) + wire[at:]
        elif kind == "delete":
            wire = wire[:at] + wire[at + draw(st.integers(1, 8)):]
        elif kind == "truncate":
            wire = wire[:at]
        else:
            wire = wire[:at] + wire[at:at + 16] + wire[at:]
    return wire


@SETTINGS
@given(wire=mutated(), data=st.data())
def test_any_bytes_end_cleanly_and_only_a_clean_exchange_is_pooled(wire: bytes, data: st.DataObject) -> None:
    assume(not _ODD_REASON.search(wire))
    outcome = exchange(split_with(data, wire))
    assert (outcome.answer is None) != (outcome.error is None)
    if outcome.error is not None:
        assert isinstance(outcome.error, UpstreamError), repr(outcome.error)
        assert not outcome.pooled
    if outcome.answer is not None:
        assert outcome.answer[0] >= 200
    if outcome.pooled:  # the reference agrees: one complete response, nothing after it
        expected, clean = reference(wire)
        assert expected is not None and clean, wire
        assert outcome.answer is not None
        assert (outcome.answer[0], outcome.answer[2]) == (expected[0], expected[2])


@pytest.mark.asyncio
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(response=responses(), junk=st.one_of(st.just(b""), JUNK), data=st.data())
async def test_over_a_socket_any_split_gives_the_answer_and_a_dirty_connection_is_not_reused(
        response: tuple[bytes, int, list[tuple[str, str]], bytes, bool], junk: bytes, data: st.DataObject) -> None:
    wire, status, _, body, keep = response
    segments = split_with(data, wire + junk)

    def script(request: Received) -> Sequence[Step]:
        if request.index > 0 or request.marker == "second":
            return [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(marked("second")), marked("second"))]
        steps: list[Step] = []
        for segment in segments:
            steps += [segment, 0.0]
        return steps

    async with HostileUpstream(script) as up:
        http = HttpPool(up.url, name="up", headers={})
        try:
            got = await asyncio.wait_for(http.request("POST", "/x", marked("first"), timeout=2.0), 5.0)
            assert (got[0], got[2]) == (status, body)
            await asyncio.sleep(0.01)
            second = await asyncio.wait_for(http.request("POST", "/x", marked("second"), timeout=2.0), 5.0)
            assert orjson.loads(second[2]) == {"m": "second"}
            reused = up.requests[1].connection == 0
            assert reused == (keep and not junk)
        finally:
            await http.aclose()
