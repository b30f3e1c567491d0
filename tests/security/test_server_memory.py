"""What hostile request framing costs the server in memory, measured on a server in its own process.

The server runs in a subprocess (so its resident set is its own) with small configured limits; the
test reads its ``VmRSS`` and ``VmHWM`` (peak, reset before each attack) from ``/proc`` and asserts the
growth stays within a small multiple of the configured limit. Before the fixes a body of 2-byte chunks
cost ~27x its size, and an unterminated trailer line grew without bound.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MAX_BODY = 4 * 1024 * 1024
MAX_HEADER = 64 * 1024
NOISE = 4 * 1024 * 1024  # what the interpreter may allocate around any request (read buffers, arenas)
TIMEOUT = 30.0

SERVER = f"""
import asyncio, sys
from labgate.server.http import HttpServer, Response, ServerLimits
from labgate.server.serve import error_response

async def handler(request):
    return Response(200, [], str(len(request.body)).encode())

async def main():
    server = HttpServer(handler, error_response=error_response,
                        limits=ServerLimits(max_body_bytes={MAX_BODY}, max_header_bytes={MAX_HEADER},
                                            request_read_timeout=60.0))
    port = await server.start("127.0.0.1", 0)
    print(port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


class Server:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port

    def status(self, field: str) -> int:
        """A ``/proc/<pid>/status`` memory field, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc status")

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def request(self, raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            sock.sendall(raw)
            return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
            more = sock.recv(65536)
            if not more:
                break
            data += more
    return data


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    process = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        served = Server(process, port)
        # warm up: one body of the full size, the normal way, so the baseline holds what any request costs
        answer = served.request(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % MAX_BODY
                                + b"x" * MAX_BODY)
        assert answer.endswith(str(MAX_BODY).encode())
        yield served
    finally:
        process.kill()
        process.wait(TIMEOUT)


def growth(server: Server, attack: Iterator[None]) -> tuple[int, int]:
    """Peak and retained growth of the server's resident set across ``attack``."""
    time.sleep(0.2)
    before = server.status("VmRSS")
    peak_known = server.reset_peak()
    for _ in attack:
        pass
    time.sleep(0.2)
    after = server.status("VmRSS")
    peak = server.status("VmHWM") if peak_known else after
    return peak - before, after - before


def test_a_body_of_two_byte_chunks_costs_a_small_multiple_of_its_size(server: Server) -> None:
    chunks = b"2\r\nab\r\n" * (MAX_BODY // 2)
    answers: list[bytes] = []

    def attack() -> Iterator[None]:
        answers.append(server.request(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      + chunks + b"0\r\n\r\n"))
        yield None

    peak, retained = growth(server, attack())
    print(f"2-byte chunks: peak +{peak / 2**20:.1f} MiB, kept +{retained / 2**20:.1f} MiB")
    assert answers[0].startswith(b"HTTP/1.1 200 ") and answers[0].endswith(str(MAX_BODY).encode())
    assert peak < 3 * MAX_BODY + NOISE, f"peak +{peak / 2**20:.1f} MiB for a {MAX_BODY / 2**20:.0f} MiB body"
    assert retained < 3 * MAX_BODY + NOISE, f"+{retained / 2**20:.1f} MiB kept after the request"


def test_an_unterminated_trailer_line_is_cut_at_the_header_limit(server: Server) -> None:
    answers: list[bytes] = []

    def attack() -> Iterator[None]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: ")
            piece = b"v" * 65536
            with contextlib.suppress(OSError):
                for _ in range(512):  # up to 32 MiB, until the server answers
                    if select.select([sock], [], [], 0)[0]:
                        break
                    sock.sendall(piece)
            answers.append(read_answer(sock))
        yield None

    peak, retained = growth(server, attack())
    print(f"unterminated trailer: peak +{peak / 2**20:.1f} MiB, kept +{retained / 2**20:.1f} MiB")
    assert answers[0].startswith(b"HTTP/1.1 431 ")
    assert peak < 4 * MAX_HEADER + NOISE, f"peak +{peak / 2**20:.1f} MiB for a {MAX_HEADER // 1024} KiB limit"
    assert retained < 4 * MAX_HEADER + NOISE
