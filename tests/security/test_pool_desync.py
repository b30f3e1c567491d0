"""One client's answer must never reach another client: a hostile upstream that desyncs the pool.

Each request carries a unique marker the upstream echoes. The upstream
(:mod:`labgate.testing.hostile`) misbehaves after answering: it sends the same
answer again (at once, or a moment later), a second answer in the same write,
the start of another answer, or an unsolicited answer on the idle connection.
Sequentially and under concurrent load, every request must get its own
marker back, and a connection that carried extra bytes must never be reused.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson
import pytest
import uvloop

from labgate.providers.http import HttpPool
from labgate.testing.hostile import HostileUpstream, Received, Step, WhenIdle, echo, marked, response

TIMEOUT = 5.0
_counter = itertools.count()


def duplicate_at_once(request: Received) -> Sequence[Step]:
    return [echo(request), echo(request)]  # two writes, back to back


def duplicate_later(request: Received) -> Sequence[Step]:
    return [echo(request), 0.001, WhenIdle(echo(request))]


def two_in_one_read(request: Received) -> Sequence[Step]:
    return [echo(request) + response(marked("stale-" + request.marker))]


def answer_then_a_partial_head(request: Received) -> Sequence[Step]:
    return [echo(request) + b"HTTP/1.1 200 OK\r\ncontent-le"]  # llhttp would be mid-message


def unsolicited_on_idle(request: Received) -> Sequence[Step]:
    return [echo(request), 0.01, WhenIdle(response(marked("unsolicited")))]


def duplicate_with_a_body_split_across_writes(request: Received) -> Sequence[Step]:
    whole = echo(request)
    return [whole + whole[:20], 0.0, WhenIdle(whole[20:])]


SCRIPTS: dict[str, Callable[[Received], Sequence[Step]]] = {
    "duplicate_at_once": duplicate_at_once,
    "duplicate_later": duplicate_later,
    "two_in_one_read": two_in_one_read,
    "answer_then_a_partial_head": answer_then_a_partial_head,
    "unsolicited_on_idle": unsolicited_on_idle,
    "duplicate_split": duplicate_with_a_body_split_across_writes,
}
# the variants whose extra bytes arrive with the answer: the connection is dropped every time
ALWAYS_DROPPED = {"duplicate_at_once", "two_in_one_read", "answer_then_a_partial_head", "duplicate_split"}


async def ask(http: HttpPool) -> tuple[str, str]:
    """One request with a fresh marker: (the marker sent, the marker answered)."""
    marker = f"req-{next(_counter)}"
    status, _, body = await asyncio.wait_for(
        http.request("POST", "/v1/chat/completions", marked(marker), timeout=TIMEOUT), TIMEOUT * 2)
    assert status == 200
    return marker, orjson.loads(body)["m"]


async def sequential(name: str) -> None:
    async with HostileUpstream(SCRIPTS[name]) as up:
        http = HttpPool(up.url, name="up", headers={})
        try:
            answers = []
            for _ in range(20):
                answers.append(await ask(http))
                if name in ("unsolicited_on_idle", "duplicate_later"):
                    await asyncio.sleep(0.03)  # the extra answer arrives while the connection is idle
            assert [sent for sent, _ in answers] == [answered for _, answered in answers]
            # every connection that carried extra bytes was dropped, never reused
            assert (up.accepted, [r.index for r in up.requests]) == (20, [0] * 20)
            assert up.unsolicited + (20 if name in ALWAYS_DROPPED else 0) >= 20
        finally:
            await http.aclose()


async def under_load(name: str, *, max_connections: int) -> None:
    async with HostileUpstream(SCRIPTS[name]) as up:
        http = HttpPool(up.url, name="up", headers={}, max_connections=max_connections)
        try:
            async def client() -> list[tuple[str, str]]:
                out = []
                for _ in range(15):
                    out.append(await ask(http))
                    # think time, so some connections sit idle when the late extra answer comes
                    await asyncio.sleep(random.uniform(0, 0.02) if name not in ALWAYS_DROPPED else 0)
                return out

            results = [pair for batch in await asyncio.gather(*(client() for _ in range(12))) for pair in batch]
            if name not in ALWAYS_DROPPED:
                # a busy pool may reuse every connection before its late answer comes (10 ms): let the
                # pooled ones sit idle well past that so the attack surely lands, then use them again
                await asyncio.sleep(0.2)
                results += await asyncio.gather(*(ask(http) for _ in range(12)))
            wrong = [(sent, answered) for sent, answered in results if sent != answered]
            assert wrong == []
            assert len(results) == (180 if name in ALWAYS_DROPPED else 192)
            if name in ALWAYS_DROPPED:  # no connection served twice
                assert {r.index for r in up.requests} == {0}
            else:  # the attack happened, and each connection it hit was dropped
                assert up.unsolicited > 0
                assert up.accepted >= up.unsolicited
        finally:
            await http.aclose()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_sequential_requests_get_their_own_answer(name: str, loop: str) -> None:
    run(sequential(name), loop)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("max_connections", [0, 3])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_concurrent_requests_get_their_own_answer(name: str, max_connections: int, loop: str) -> None:
    run(under_load(name, max_connections=max_connections), loop)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_bytes_in_the_socket_since_the_last_loop_poll_stop_reuse(loop: str) -> None:
    """Unsolicited bytes reach our socket in the very iteration the next request takes the idle
    connection: data_received has not run yet, so only the poll before reuse can see them."""
    async def case() -> None:
        async with HostileUpstream(lambda request: [echo(request)]) as up:
            http = HttpPool(up.url, name="up", headers={})
            try:
                await ask(http)
                await ask(http)
                assert up.accepted == 1  # a clean connection is reused
                (peer,) = up._peers
                peer.write(response(marked("unsolicited")))  # in our socket now, before any loop poll
                marker, answered = await ask(http)
                assert marker == answered
                assert up.accepted == 2
            finally:
                await http.aclose()

    run(case(), loop)


def run(coro: Coroutine[Any, Any, None], loop: str) -> None:
    if loop == "uvloop":
        uvloop.run(coro)
    else:
        asyncio.run(coro)
