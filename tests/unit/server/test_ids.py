"""labgate's own request ids: unique, 128 random bits, made in batches, never shared with a forked child."""

from __future__ import annotations

import os
import re

import pytest

from labgate.server import ids


def test_ids_are_prefixed_128_bit_hex_and_unique_across_batches() -> None:
    made = [ids.request_id() for _ in range(5 * ids.BATCH + 3)]  # several refills
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", rid) for rid in made)
    assert len(set(made)) == len(made)


def test_the_client_header_never_becomes_the_id() -> None:
    assert ids.request_id({"x-request-id": "req_victim"}) != "req_victim"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_hands_out_its_parents_unused_ids() -> None:
    ids.request_id()  # the parent holds a batch now
    left = list(ids.ready)
    assert left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it would hand out next, then leave at once
        try:
            os.write(write, f"{len(ids.ready)} {ids.request_id()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    count, child_id = answer.split()
    assert count == "0"  # the inherited batch was dropped in the child
    assert child_id not in left
    assert ids.ready == left  # the parent's batch is untouched
