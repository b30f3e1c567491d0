"""Cache keys: what is hashed, what is left out, and the globs that find them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from labgate.state.keys import ENTRY_GLOB, key_glob, key_hash

BODY = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


def test_fields_that_cannot_change_the_answer_are_not_keyed() -> None:
    base = key_hash("chat", "p/m", BODY)
    same = {"messages": BODY["messages"], "temperature": 0.0, "model": "alias", "stream": True,
            "stream_options": {"include_usage": True}, "user": "u", "cache": {"ttl": 5}, "metadata": {"a": "b"}}
    assert key_hash("chat", "p/m", same) == base
    assert key_hash("chat", "p/other", BODY) != base  # another target
    assert key_hash("completions", "p/m", BODY) != base  # another endpoint
    assert key_hash("chat", "p/m", {**BODY, "max_tokens": 5}) != base
    assert key_hash("chat", "p/m", {**BODY, "temperature": 0.5}) != base
    assert len(base) == 32 and all(c in "0123456789abcdef" for c in base)


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                       st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=5),
                                 st.booleans()), max_size=6))
def test_key_does_not_depend_on_key_order(body: dict[str, object]) -> None:
    assert key_hash("chat", "t", body) == key_hash("chat", "t", dict(reversed(list(body.items()))))


def test_huge_integral_floats_do_not_break_the_key() -> None:
    # orjson parses integers past 64 bits as floats: 1e23 is integral but no 64-bit int
    assert key_hash("chat", "t", {**BODY, "seed": 1e23}) != key_hash("chat", "t", {**BODY, "seed": 1e22})
    assert key_hash("chat", "t", {**BODY, "x": -1e300}) != key_hash("chat", "t", BODY)


def test_key_globs_only_match_cache_entries() -> None:
    assert key_glob("ns") == "labgate:ns:" + ENTRY_GLOB
    assert key_glob(None, "ab*") == "labgate:*:ab*"
