"""SSEBuffer: the same events however the bytes are split, and linear work for an event in many pieces."""

from __future__ import annotations

import itertools
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.providers.sse import SSEBuffer

PIECES = st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\r\n", b"data: x", b"\n\n", b"\r\n\r\n"]), max_size=40)


@settings(max_examples=500, deadline=None)
@given(pieces=PIECES, cuts=st.sets(st.integers(0, 200), max_size=10))
def test_events_do_not_depend_on_how_the_stream_is_split(pieces: list[bytes], cuts: set[int]) -> None:
    stream = b"".join(pieces)
    edges = [0, *sorted(c for c in cuts if c < len(stream)), len(stream)]
    buffer = SSEBuffer()
    events = [event for a, b in itertools.pairwise(edges) for event in buffer.feed(stream[a:b])]
    *expected, pending = stream.replace(b"\r\n", b"\n").split(b"\n\n")
    assert (events, buffer.pending) == (expected, pending)


def test_an_event_in_many_small_pieces_is_joined_once() -> None:
    """Re-joining the pending bytes on every piece was quadratic: 16 MiB in 1 KiB pieces took minutes."""
    piece = b"x" * 1024
    buffer = SSEBuffer()
    started = time.process_time()
    buffer.feed(b"data: ")
    for _ in range(16 * 1024):
        assert buffer.feed(piece) == []
    [event] = buffer.feed(b"\n\n")
    assert len(event) == 6 + 16 * 1024 * 1024
    assert time.process_time() - started < 5.0  # linear: well under a second; quadratic: minutes
