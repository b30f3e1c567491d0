"""What an upstream sends is bounded: header size and count, body size, error bodies, Retry-After.

Bounds are asserted from the configured limits (callbacks run, bytes read,
memory allocated), not from wall-clock time, except that an attempt must end
by its own deadline plus a little slack.
"""

from __future__ import annotations

import asyncio
import math
import tracemalloc
from collections.abc import Iterator, Sequence

import pytest

from labgate.errors import (
    UpstreamBadResponseError,
    UpstreamRateLimitError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from labgate.providers import pool as pool_module
from labgate.providers.http import MAX_RETRY_AFTER_S, HttpPool, retry_after
from labgate.providers.pool import MAX_ERROR_BODY, MAX_HEADER_BYTES, MAX_HEADER_COUNT, Connection
from labgate.testing.hostile import Flood, HostileUpstream, Received, Step, echo, marked

pytestmark = pytest.mark.asyncio
TIMEOUT = 5.0
READ_MAX = 256 * 1024  # the most one read hands data_received (uvloop reads 256 KiB, asyncio 256 KiB)
HEAD = b"HTTP/1.1 200 OK\r\n"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts what the client parsed: bytes handed to data_received, header callbacks."""
    counts = {"bytes": 0, "headers": 0}
    data_received, on_header = Connection.data_received, Connection.on_header

    def count_bytes(self: Connection, data: bytes) -> None:
        counts["bytes"] += len(data)
        data_received(self, data)

    def count_header(self: Connection, name: bytes, value: bytes) -> None:
        counts["headers"] += 1
        on_header(self, name, value)

    monkeypatch.setattr(Connection, "data_received", count_bytes)
    monkeypatch.setattr(Connection, "on_header", count_header)
    yield counts


def client(up: HostileUpstream, **options: int) -> HttpPool:
    return HttpPool(up.url, name="up", headers={}, **options)


async def post(http: HttpPool, *, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = await asyncio.wait_for(
        http.request("POST", "/x", marked("a"), timeout=timeout), timeout + 2.0)
    return status, dict(headers), body


def chunked_flood(total: int, piece: int = 64 * 1024) -> Flood:
    chunk = b"%x\r\n%b\r\n" % (piece, b"x" * piece)
    return Flood(chunk * 4, total)


# --- headers


async def test_a_header_line_flood_stops_at_the_count_limit(counted: dict[str, int]) -> None:
    flood = HEAD + b"x-a: b\r\n" * 400_000 + b"content-length: 0\r\n\r\n"
    async with HostileUpstream(lambda request: [flood]) as up:
        http = client(up)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamBadResponseError) as caught:
                await post(http)
            assert caught.value.message == (f"provider 'up' sent a header section over the limit "
                                            f"({MAX_HEADER_COUNT} lines, {MAX_HEADER_BYTES} bytes)")
            assert counted["headers"] == MAX_HEADER_COUNT + 1  # parsing stopped at the first line over
            assert loop.time() - started < TIMEOUT  # ended by the limit, long before the deadline
        finally:
            await http.aclose()


@pytest.mark.parametrize("lines", [MAX_HEADER_COUNT, MAX_HEADER_COUNT + 1])
async def test_distinct_header_names_count_against_the_line_limit(lines: int) -> None:
    """Distinct names are counted at the end of the head (the byte limit bounds them until then)."""
    head = HEAD + b"".join(b"x-%d: v\r\n" % n for n in range(lines - 1)) + b"content-length: 2\r\n\r\nok"
    async with HostileUpstream(lambda request: [head]) as up:
        http = client(up)
        try:
            if lines > MAX_HEADER_COUNT:
                with pytest.raises(UpstreamBadResponseError, match="header section over the limit"):
                    await post(http)
            else:
                status, headers, body = await post(http)
                assert (status, len(headers), body) == (200, MAX_HEADER_COUNT, b"ok")
        finally:
            await http.aclose()


async def test_a_header_size_flood_stops_at_the_size_limit(counted: dict[str, int]) -> None:
    line = b"x-" + b"a" * 1000 + b": " + b"b" * 1000 + b"\r\n"
    flood = HEAD + line * 2000 + b"content-length: 0\r\n\r\n"
    async with HostileUpstream(lambda request: [flood]) as up:
        http = client(up)
        try:
            with pytest.raises(UpstreamBadResponseError, match="header section over the limit"):
                await post(http)
            assert counted["headers"] <= MAX_HEADER_BYTES // len(line) + 1
        finally:
            await http.aclose()


async def test_one_endless_header_line_is_cut_after_the_size_limit(counted: dict[str, int]) -> None:
    """httptools accumulates a header line until it ends: the client counts raw bytes while the head is open."""
    def script(request: Received) -> Sequence[Step]:
        return [HEAD + b"x-big: ", Flood(b"a" * 4096, 64 * 1024 * 1024)]

    async with HostileUpstream(script) as up:
        http = client(up)
        try:
            with pytest.raises(UpstreamBadResponseError, match="header section over the limit"):
                await post(http)
            assert counted["bytes"] <= MAX_HEADER_BYTES + READ_MAX
            assert counted["headers"] == 0
        finally:
            await http.aclose()


async def test_a_slow_header_trickle_ends_at_the_attempt_deadline() -> None:
    def script(request: Received) -> Sequence[Step]:
        steps: list[Step] = [HEAD]
        for n in range(1000):
            steps += [b"x-%d: y\r\n" % n, 0.01]
        return steps

    async with HostileUpstream(script) as up:
        http = client(up)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamTimeoutError, match=r"timed out after 0\.3 s"):
                await post(http, timeout=0.3)
            assert loop.time() - started < 0.3 + 0.5
        finally:
            await http.aclose()


async def test_repeated_headers_are_joined_in_order() -> None:
    lines = b"".join(b"x-dup: %d\r\n" % n for n in range(200))
    answer = HEAD + lines + b"content-length: 2\r\n\r\n{}"
    async with HostileUpstream(lambda request: [answer]) as up:
        http = client(up)
        try:
            status, headers, body = await post(http)
            assert (status, body) == (200, b"{}")
            assert headers["x-dup"] == ", ".join(str(n) for n in range(200))
            assert up.accepted == 1
        finally:
            await http.aclose()


# --- bodies


async def test_an_announced_body_over_the_limit_is_refused_before_it_is_read(counted: dict[str, int]) -> None:
    def script(request: Received) -> Sequence[Step]:
        return [HEAD + b"content-length: 1000000000000\r\n\r\n", Flood(b"x" * 65536, 64 * 1024 * 1024)]

    async with HostileUpstream(script) as up:
        http = client(up, max_response_bytes=4096)
        try:
            with pytest.raises(UpstreamBadResponseError) as caught:
                await post(http)
            assert (caught.value.status, caught.value.code) == (502, "upstream_response_too_large")
            assert caught.value.message == ("provider 'up' announced a 1000000000000-byte body, over the limit "
                                            "of 4096 bytes (max_response_bytes)")
            assert counted["bytes"] <= READ_MAX
        finally:
            await http.aclose()


async def test_a_huge_chunked_body_is_refused_without_buffering_it(counted: dict[str, int]) -> None:
    limit = 1024 * 1024

    def script(request: Received) -> Sequence[Step]:
        return [HEAD + b"transfer-encoding: chunked\r\n\r\n", chunked_flood(200 * 1024 * 1024)]

    async with HostileUpstream(script) as up:
        http = client(up, max_response_bytes=limit)
        try:
            tracemalloc.start()
            try:
                with pytest.raises(UpstreamBadResponseError) as caught:
                    await post(http)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert caught.value.code == "upstream_response_too_large"
            assert counted["bytes"] <= limit + 2 * READ_MAX
            assert peak < 4 * limit  # what was kept, plus a read or two in flight
            assert up.sent < 200 * 1024 * 1024  # the upstream was cut off
        finally:
            await http.aclose()


async def test_a_stream_over_the_limit_fails_mid_stream() -> None:
    limit = 256 * 1024

    def script(request: Received) -> Sequence[Step]:
        return [HEAD + b"content-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                chunked_flood(64 * 1024 * 1024, piece=4096)]

    async with HostileUpstream(script) as up:
        http = client(up, max_response_bytes=limit)
        try:
            stream = await asyncio.wait_for(http.open_stream("/x", marked("a"), timeout=TIMEOUT), TIMEOUT)
            received = 0
            with pytest.raises(UpstreamBadResponseError) as caught:
                async for chunk in stream.chunks():
                    received += len(chunk)
            assert caught.value.code == "upstream_response_too_large"
            assert received <= limit
        finally:
            await http.aclose()


async def test_a_body_at_the_limit_is_fine_and_the_connection_reused() -> None:
    limit = 4096

    def script(request: Received) -> Sequence[Step]:
        return [HEAD + b"content-length: 4096\r\n\r\n" + b"x" * 4096]

    async with HostileUpstream(script) as up:
        http = client(up, max_response_bytes=limit)
        try:
            assert (await post(http))[2] == b"x" * limit
            assert (await post(http))[2] == b"x" * limit
            assert up.accepted == 1
        finally:
            await http.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_an_error_body_is_read_up_to_its_cap_only(counted: dict[str, int], stream: bool) -> None:
    message = b'{"error":{"message":"overloaded, try later"},"pad":"'

    def script(request: Received) -> Sequence[Step]:
        return [b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 100000000\r\n\r\n" + message,
                Flood(b"x" * 65536, 100_000_000)]

    async with HostileUpstream(script) as up:
        http = client(up)
        try:
            with pytest.raises(UpstreamStatusError) as caught:
                if stream:
                    await asyncio.wait_for(http.open_stream("/x", marked("a"), timeout=TIMEOUT), TIMEOUT)
                else:
                    status, headers, body = await post(http)
                    assert (status, len(body)) == (503, MAX_ERROR_BODY)
                    raise http.error_for(status, body, headers)
            assert caught.value.upstream_status == 503
            # not JSON once cut: the message quotes its start (redacted, at most 200 characters)
            assert caught.value.message.startswith("provider 'up' answered 503: {\"error\"")
            assert counted["bytes"] <= MAX_ERROR_BODY + 2 * READ_MAX
            await asyncio.sleep(0.05)
            assert http._pool.idle == 0  # the rest was never read: the connection is dropped
        finally:
            await http.aclose()


async def test_a_small_error_body_keeps_the_connection() -> None:
    def script(request: Received) -> Sequence[Step]:
        if request.index == 0:
            body = b'{"error":{"message":"slow down"}}'
            return [b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: %d\r\n\r\n%b"
                    % (len(body), body)]
        return [echo(request)]

    async with HostileUpstream(script) as up:
        http = client(up)
        try:
            with pytest.raises(UpstreamRateLimitError) as caught:
                await asyncio.wait_for(http.open_stream("/x", marked("a"), timeout=TIMEOUT), TIMEOUT)
            assert (caught.value.message, caught.value.retry_after) == ("provider 'up' answered 429: slow down", 7.0)
            assert (await post(http))[0] == 200
            assert up.accepted == 1
        finally:
            await http.aclose()


async def test_the_config_default_is_the_pool_default() -> None:
    from labgate.config.schema.providers import ProviderConfig

    assert ProviderConfig(type="openai").max_response_bytes == pool_module.DEFAULT_MAX_BODY


# --- Retry-After


@pytest.mark.parametrize(("value", "expected"), [
    ("7", 7.0),
    ("0.5", 0.5),
    (" 12 ", 12.0),
    ("-5", 0.0),
    ("1e308", MAX_RETRY_AFTER_S),
    ("99999999999", MAX_RETRY_AFTER_S),
    ("inf", None),
    ("-inf", None),
    ("nan", None),
    ("Infinity", None),
    ("soon", None),
    ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
    ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_S),
    (None, None),
])
async def test_retry_after_is_parsed_defensively(value: str | None, expected: float | None) -> None:
    assert retry_after(value) == expected


async def test_retry_after_inf_from_an_upstream_is_a_clean_429() -> None:
    body = b'{"error":{"message":"slow down"}}'
    answer = (b"HTTP/1.1 429 Too Many Requests\r\nretry-after: inf\r\ncontent-length: %d\r\n\r\n%b"
              % (len(body), body))
    async with HostileUpstream(lambda request: [answer]) as up:
        http = client(up)
        try:
            with pytest.raises(UpstreamRateLimitError) as caught:
                await asyncio.wait_for(http.open_stream("/x", marked("a"), timeout=TIMEOUT), TIMEOUT)
            assert caught.value.retry_after is None
            assert math.isfinite(caught.value.status)
        finally:
            await http.aclose()


@pytest.mark.parametrize("junk", [
    b"1;" + b"e" * 1000,  # a chunk extension that never ends
    b"1\r\nx\r\n0\r\nx-trailer: " + b"t" * 1000,  # a trailer line that never ends
])
async def test_chunk_framing_without_body_bytes_is_bounded(counted: dict[str, int], junk: bytes) -> None:
    """httptools accumulates a trailer line as it does a header line; llhttp skips extensions. Either way
    the bytes between body bytes are bounded like a header section."""
    def script(request: Received) -> Sequence[Step]:
        return [HEAD + b"transfer-encoding: chunked\r\n\r\n" + junk[:-1000], Flood(junk[-1000:], 64 * 1024 * 1024)]

    async with HostileUpstream(script) as up:
        http = client(up)
        try:
            with pytest.raises(UpstreamBadResponseError, match="bytes of chunk framing or trailers without a body"):
                await post(http)
            assert counted["bytes"] <= 2 * MAX_HEADER_BYTES + 2 * READ_MAX
        finally:
            await http.aclose()


async def test_trailers_are_not_taken_for_headers() -> None:
    answer = (HEAD + b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nretry-after: inf\r\nx-late: 1\r\n\r\n")
    async with HostileUpstream(lambda request: [answer]) as up:
        http = client(up)
        try:
            status, headers, body = await post(http)
            assert (status, body, headers) == (200, b"{}", {"transfer-encoding": "chunked"})
            assert (await post(http))[2] == b"{}"
            assert up.accepted == 1
        finally:
            await http.aclose()
