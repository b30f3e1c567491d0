"""One upstream connection's limits at their exact edges, each read as the test splits it.

The connection (``providers/connection.py``) is driven by hand (:mod:`labgate.testing.scripted`): over a
socket the kernel decides where reads split, and the limits that count bytes per read (a header section
still open, chunk framing between body bytes) could not be tested byte for byte. What a test sees is what
the pool's caller sees: the answer or the error, and whether the connection went back to the pool. The
mutation run of ``providers/connection.py`` (docs/testing.md) led here.
"""

from __future__ import annotations

import asyncio

import pytest

from labgate.errors import LabgateError, UpstreamBadResponseError, UpstreamConnectionError
from labgate.providers.pool import (
    MAX_ERROR_BODY,
    MAX_HEADER_BYTES,
    MAX_HEADER_COUNT,
    MAX_INTERIM,
    TOO_LARGE,
    Answer,
)
from labgate.testing.scripted import Scripted

pytestmark = pytest.mark.asyncio
WHERE = "provider 'up'"
HEAD = b"HTTP/1.1 200 OK\r\n"
OVER = f"{WHERE} sent a header section over the limit ({MAX_HEADER_COUNT} lines, {MAX_HEADER_BYTES} bytes)"
FRAMING = f"{WHERE} sent over {2 * MAX_HEADER_BYTES} bytes of chunk framing or trailers without a body byte"
CHUNKED = b"transfer-encoding: chunked\r\n"


def wire(*, max_body: int | None = None) -> Scripted:
    loop = asyncio.get_running_loop()
    return Scripted(loop) if max_body is None else Scripted(loop, max_body=max_body)


def padding(size: int) -> dict[str, str]:
    """Distinct header lines whose size, counted as the limit counts it (name, value, 4), is ``size``."""
    lines: dict[str, str] = {}
    while size:
        value = 1000 if size > 1009 + 10 else size - 9  # names are 5 bytes; the last value 1 byte or more
        lines[f"x-{len(lines):03d}"] = "a" * value
        size -= 9 + value
    return lines


def encoded(headers: dict[str, str]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()


def answer_of(waiter: asyncio.Future[Answer]) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = waiter.result()
    assert isinstance(body, bytes)
    return status, headers, body


def outcome(up: Scripted, waiter: asyncio.Future[Answer]) -> tuple[object, bool]:
    """What the caller got (the answer, or the error's message) and whether the connection went back to the pool."""
    error = waiter.exception()
    if error is not None:
        assert isinstance(error, LabgateError), repr(error)
        return error.message, up.pooled
    return answer_of(waiter), up.pooled


def error_of(waiter: asyncio.Future[Answer]) -> LabgateError:
    error = waiter.exception()
    assert isinstance(error, LabgateError), repr(error)
    return error


async def test_padding_counts_as_the_limit_does() -> None:
    for size in (9 + 1, 1009, 1009 + 10, 1009 + 11, MAX_HEADER_BYTES - 19):
        lines = padding(size)
        assert sum(len(name) + len(value) + 4 for name, value in lines.items()) == size
        assert len(encoded(lines)) == size


# --- the header section


@pytest.mark.parametrize("over", [0, 1])
async def test_a_header_section_of_exactly_the_byte_limit_is_read_and_one_byte_more_is_refused(over: int) -> None:
    """In one read (the head's raw bytes are bounded separately while it is still open, below)."""
    up = wire()
    waiter = up.send()
    lines = {"content-length": "2", **padding(MAX_HEADER_BYTES - 19 + over)}  # content-length: 2 counts 19
    up.feed(HEAD + encoded(lines) + b"\r\n{}")
    assert outcome(up, waiter) == ((OVER, False) if over else ((200, lines, b"{}"), True))


@pytest.mark.parametrize("over", [0, 1])
async def test_a_head_still_open_after_the_byte_limit_is_refused(over: int) -> None:
    """Counted in raw bytes, status line and all, however the reads split (a line may never end)."""
    up = wire()
    waiter = up.send()
    head = HEAD + b"content-length: 2\r\n"
    lines = padding(MAX_HEADER_BYTES + over - len(head))
    up.feed(head + encoded(lines), b"\r\n{}")  # the first read ends with the head still open
    assert outcome(up, waiter) == ((OVER, False) if over else ((200, {"content-length": "2", **lines}, b"{}"), True))


async def test_the_bytes_of_a_head_still_open_add_up_over_reads() -> None:
    up = wire()
    waiter = up.send()
    start = HEAD + b"x-long: "
    up.feed(start + b"a" * (MAX_HEADER_BYTES // 2 - len(start)), b"a" * (MAX_HEADER_BYTES // 2 + 1))
    assert outcome(up, waiter) == (OVER, False)


@pytest.mark.parametrize("trailers", [MAX_HEADER_COUNT - 1, MAX_HEADER_COUNT])
async def test_trailers_count_against_the_line_limit_with_the_head(trailers: int) -> None:
    up = wire()
    waiter = up.send()
    tail = b"".join(b"x-t%d: v\r\n" % n for n in range(trailers))
    up.feed(HEAD + CHUNKED + b"\r\n2\r\n{}\r\n0\r\n" + tail + b"\r\n")
    kept = (200, {"transfer-encoding": "chunked"}, b"{}")  # trailers are not kept
    over = trailers == MAX_HEADER_COUNT  # with the head's one line
    assert outcome(up, waiter) == ((OVER, False) if over else (kept, True))


# --- the status


@pytest.mark.parametrize("interim", [1, MAX_INTERIM, MAX_INTERIM + 1])
async def test_interim_answers_up_to_their_limit_are_skipped(interim: int) -> None:
    up = wire()
    waiter = up.send()
    hints = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
    up.feed(b"HTTP/1.1 100 Continue\r\n\r\n" + hints * (interim - 1) + HEAD + b"content-length: 2\r\n\r\n{}")
    refused = f"{WHERE} sent more than {MAX_INTERIM} interim (1xx) responses"
    answer = (200, {"content-length": "2"}, b"{}")
    assert outcome(up, waiter) == ((refused, False) if interim > MAX_INTERIM else (answer, True))


async def test_the_final_head_after_an_interim_one_is_counted_afresh() -> None:
    """The 1xx's lines and bytes (repeated names, near the byte limit) do not count against the final head's."""
    up = wire()
    waiter = up.send()
    link = "<" + "a" * 990 + ">"
    hints = b"HTTP/1.1 103 Early Hints\r\n" + f"link: {link}\r\n".encode() * 64 + b"\r\n"
    lines = {"content-length": "2", **{f"x-{n}": "v" for n in range(MAX_HEADER_COUNT - 1)}}  # at the line limit
    up.feed(hints + HEAD + encoded(lines) + b"\r\n{}")
    assert outcome(up, waiter) == ((200, lines, b"{}"), True)


@pytest.mark.parametrize("status", [b"099", b"000"])
async def test_a_status_below_100_is_refused_with_its_number(status: bytes) -> None:
    up = wire()
    waiter = up.send()
    up.feed(b"HTTP/1.1 " + status + b" Odd\r\ncontent-length: 0\r\n\r\n")
    error = error_of(waiter)
    assert isinstance(error, UpstreamBadResponseError)
    assert error.message == f"{WHERE} sent the invalid status {status.decode()}"
    assert not up.pooled


# --- bodies


async def test_a_3xx_body_is_bounded_as_an_error_body_not_by_max_body() -> None:
    up = wire(max_body=1024)
    waiter = up.send()
    body = b"x" * 2000
    up.feed(b"HTTP/1.1 300 Multiple Choices\r\ncontent-length: 2000\r\n\r\n" + body)
    assert outcome(up, waiter) == ((300, {"content-length": "2000"}, body), True)


async def test_a_3xx_body_over_the_error_body_cap_is_cut_and_its_connection_dropped() -> None:
    up = wire()
    waiter = up.send()
    body = b"x" * (MAX_ERROR_BODY + 10)
    up.feed(b"HTTP/1.1 300 Multiple Choices\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    assert outcome(up, waiter) == ((300, {"content-length": str(len(body))}, body[:MAX_ERROR_BODY]), False)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_body_over_max_body_is_refused_with_the_limit(stream: bool) -> None:
    up = wire(max_body=10)
    waiter = up.send(stream=stream)
    up.feed(HEAD + CHUNKED + b"\r\n", b"b\r\n" + b"x" * 11 + b"\r\n")
    if stream:
        status, _, queue = waiter.result()
        assert status == 200 and not isinstance(queue, bytes)
        with pytest.raises(UpstreamBadResponseError) as caught:
            await asyncio.wait_for(queue.read(5.0), 5.0)
        error: LabgateError = caught.value
    else:
        error = error_of(waiter)
    assert (error.message, error.code) == (
        f"{WHERE} sent a body, over the limit of 10 bytes (max_response_bytes)", TOO_LARGE)
    assert not up.pooled


@pytest.mark.parametrize("over", [0, 1])
async def test_chunk_framing_between_body_bytes_is_bounded_from_the_head_and_after_each_body_byte(
        over: int) -> None:
    """Twice MAX_HEADER_BYTES of reads without a body byte: counted from the read that ended the head, and
    again after each read with a body byte, over as many reads as it takes."""
    up = wire()
    waiter = up.send()
    head = HEAD + CHUNKED + b"\r\n"
    limit = 2 * MAX_HEADER_BYTES
    up.feed(head,  # the head alone: its bytes count
            b"2;" + b"e" * (limit - len(head) - 2),  # a chunk extension: exactly at the limit
            b"\r\n{}",  # body bytes: counted afresh
            b"\r\n2;" + b"e" * 1000, b"e" * (limit - 1004 + over),  # exactly at the limit (+ over), in two reads
            b"\r\n{}\r\n0\r\n\r\n")
    answer = (200, {"transfer-encoding": "chunked"}, b"{}{}")
    assert outcome(up, waiter) == ((FRAMING, False) if over else (answer, True))


@pytest.mark.parametrize("body", [b"", b"hello"])
async def test_a_head_answer_has_no_body_and_its_connection_is_closed(body: bytes) -> None:
    """llhttp does not know the request was a HEAD: it would wait for the body the answer announces. Bytes
    that follow in the same read are not the answer's."""
    up = wire()
    waiter = up.send(b"HEAD /x HTTP/1.1\r\nhost: up\r\n\r\n", no_body=True)
    up.feed(HEAD + b"content-length: 5\r\n\r\n" + body)
    assert outcome(up, waiter) == ((200, {"content-length": "5"}, b""), False)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_that_arrives_after_its_caller_cancelled_keeps_the_connection(stream: bool) -> None:
    """The caller's task is cancelled (its future with it) and has not run ``abandon()`` yet when the whole
    answer arrives: it is read to its end, given to nobody, and the clean connection goes back to the pool."""
    up = wire()
    waiter = up.send(stream=stream)
    waiter.cancel()
    up.feed(HEAD + b"content-length: 2\r\n\r\n{}")
    assert up.pooled
    up.conn.abandon(waiter)  # too late: that exchange is over
    assert up.pooled


# --- the connection ends


@pytest.mark.parametrize("received", [b"", b"content-length: 5\r\n\r\nhel", CHUNKED + b"\r\n5\r\nhel"])
@pytest.mark.parametrize("exc", [None, ConnectionResetError("reset by peer")])
async def test_a_connection_lost_mid_exchange_says_how_far_it_got_and_why(
        received: bytes, exc: Exception | None) -> None:
    up = wire()
    waiter = up.send()
    if received:
        up.feed(HEAD + received)
    up.conn.connection_lost(exc)
    error = error_of(waiter)
    assert isinstance(error, UpstreamConnectionError)
    what = "cut the response short" if received else "closed the connection before answering"
    assert error.message == f"{WHERE} {what}" + (" (reset by peer)" if exc else "")
    assert (up.pool.idle, up.pool.open) == (0, 0)


async def test_an_answer_without_a_length_ends_with_the_connection() -> None:
    up = wire()
    waiter = up.send()
    up.feed(HEAD + b"x-a: 1\r\n\r\nhel", b"lo")
    assert not waiter.done()
    up.conn.connection_lost(None)
    assert answer_of(waiter) == (200, {"x-a": "1"}, b"hello")
    assert (up.pool.idle, up.pool.open) == (0, 0)


async def test_bytes_before_any_request_drop_the_connection() -> None:
    up = wire()
    up.feed(HEAD + b"content-length: 2\r\n\r\n{}")
    assert up.transport.closing
    assert (up.pool.idle, up.pool.open) == (0, 0)  # forgotten at once, its slot freed


@pytest.mark.parametrize("over", [0, 1])
async def test_blank_lines_before_an_answer_count_against_the_head_limit(over: int) -> None:
    """llhttp skips CR and LF before a message: as many as an open head's bytes, no more."""
    up = wire()
    waiter = up.send()
    up.feed(b"\r\n" * (MAX_HEADER_BYTES // 2) + b"\n" * over, HEAD + b"content-length: 2\r\n\r\n{}")
    assert outcome(up, waiter) == ((OVER, False) if over else ((200, {"content-length": "2"}, b"{}"), True))


async def test_a_connection_without_a_socket_to_poll_is_ready_when_clean() -> None:
    """Where poll(2) cannot be asked (no socket, or no poll(2)), a clean connection is reusable as such."""
    up = wire()
    waiter = up.send()
    up.feed(HEAD + b"content-length: 2\r\n\r\n{}")
    assert answer_of(waiter) == (200, {"content-length": "2"}, b"{}")
    assert up.conn.ready()

