"""Stream deadlines on one stream: the first token within its deadline, then each chunk within the idle timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from labgate.config.schema.gateway import ResilienceConfig
from labgate.errors import UpstreamTimeoutError
from labgate.providers.base import StreamInfo
from labgate.routing.pace import Pace, Paced, Timeouts, first_token

pytestmark = pytest.mark.asyncio
HANG = 10.0  # a wait this long is a hang: the test fails instead of waiting for it
STALL = b"<stall>"  # in a script: the stream waits here until ``go`` is set


class Scripted:
    """A stream that sends ``script`` in order; ``b"token..."`` chunks are content (they set first_token)."""

    dialect = "openai"

    def __init__(self, *script: bytes) -> None:
        self.script = list(script)
        self.info = StreamInfo()
        self.go = asyncio.Event()
        self.stalled = asyncio.Event()  # set when the script reaches a stall
        self.closed = False

    async def _chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.script:
            if chunk == STALL:
                self.stalled.set()
                await self.go.wait()
                continue
            if chunk.startswith(b"token") and self.info.first_token is None:
                self.info.first_token = time.perf_counter()
            yield chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def aclose(self) -> None:
        self.closed = True


async def opened(stream: Scripted) -> Scripted:
    return stream


async def read_all(stream: Paced) -> list[bytes]:
    return [chunk async for chunk in stream]


async def test_events_before_the_first_token_are_held_then_sent_in_order_and_the_idle_bound_follows() -> None:
    stream = Scripted(b"role", b"token 1", STALL, b"token 2")
    paced = await asyncio.wait_for(first_token(opened(stream), Timeouts(5.0, 0.05), started=time.monotonic(),
                                               where="p/m"), HANG)
    assert [await anext(paced), await anext(paced)] == [b"role", b"token 1"]
    with pytest.raises(UpstreamTimeoutError) as idle:
        await asyncio.wait_for(anext(paced), HANG)
    assert (idle.value.code, idle.value.message) == (
        "stream_idle_timeout", "p/m sent nothing for 0.05 s in the middle of the stream (stream_idle_timeout_s)")


async def test_without_a_first_token_deadline_the_idle_bound_still_names_the_deployment() -> None:
    paced = await first_token(opened(Scripted(b"token", STALL)), Timeouts(None, 0.05), started=0.0, where="q/m")
    assert await anext(paced) == b"token"
    with pytest.raises(UpstreamTimeoutError, match=r"^q/m sent nothing for 0\.05 s"):
        await asyncio.wait_for(anext(paced), HANG)


async def test_a_stream_that_ends_without_a_token_is_passed_on_whole() -> None:
    stream = Scripted(b"role", b"done")
    paced = await first_token(opened(stream), Timeouts(5.0, None), started=time.monotonic(), where="p/m")
    assert (await read_all(paced), stream.closed) == ([b"role", b"done"], False)


async def test_no_token_by_the_deadline_closes_the_stream_and_says_which_setting() -> None:
    stream = Scripted(b"role", STALL, b"token")
    with pytest.raises(UpstreamTimeoutError) as late:
        await asyncio.wait_for(first_token(opened(stream), Timeouts(0.05, None), started=time.monotonic(),
                                           where="p/m"), HANG)
    assert (late.value.code, late.value.message, stream.closed) == (
        "first_token_timeout", "p/m sent no token within 0.05 s (ttft_timeout_s)", True)


async def test_a_deadline_already_past_fails_before_a_token_that_comes_later() -> None:
    stream = Scripted(STALL, b"token")
    asyncio.get_running_loop().call_later(0.2, stream.go.set)  # after a timeout of 0, before one of 1 s
    with pytest.raises(UpstreamTimeoutError, match="sent no token"):
        await asyncio.wait_for(first_token(opened(stream), Timeouts(1.0, None), started=time.monotonic() - 5,
                                           where="p/m"), HANG)


async def test_a_route_inherits_each_deadline_it_does_not_set() -> None:
    config = ResilienceConfig.model_validate({"ttft_timeout_s": 3, "stream_idle_timeout_s": 9, "routes": {
        "idle-only": {"stream_idle_timeout_s": 2}, "ttft-only": {"ttft_timeout_s": 1},
        "ttft-off": {"ttft_timeout_s": None}}})
    pace = Pace.of(config)
    assert pace is not None
    assert [pace.of_model(m) for m in ("idle-only", "ttft-only", "ttft-off", "other", None)] == [
        Timeouts(3, 2), Timeouts(1, 9), Timeouts(None, 9), Timeouts(3, 9), Timeouts(3, 9)]


async def test_a_wait_for_the_first_token_that_is_cancelled_closes_the_stream() -> None:
    stream = Scripted(b"role", STALL, b"token")
    waiting = asyncio.create_task(first_token(opened(stream), Timeouts(5.0, None), started=time.monotonic(),
                                              where="p/m"))
    await asyncio.wait_for(stream.stalled.wait(), HANG)  # the role chunk is held, the token still to come
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert stream.closed


async def test_a_stream_that_fails_to_open_fails_the_attempt_with_its_own_error() -> None:
    async def refused() -> Scripted:
        raise ConnectionRefusedError("no engine")

    with pytest.raises(ConnectionRefusedError, match="no engine"):
        await first_token(refused(), Timeouts(5.0, None), started=time.monotonic(), where="p/m")
