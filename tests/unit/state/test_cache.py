"""Cache keys, request controls and the entry format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgate.errors import RequestError
from labgate.providers.base import Usage
from labgate.state.controls import Controls, parse_controls
from labgate.state.entry import Entry
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


def test_controls_from_header_and_body() -> None:
    assert parse_controls(None, None) == Controls()
    assert parse_controls("no-cache", None) == Controls(no_cache=True)
    assert parse_controls("No-Store, max-age=30", None) == Controls(no_store=True, max_age=30.0)
    assert parse_controls(None, {"no-cache": True, "ttl": 60, "s-maxage": 10}) == Controls(True, False, 60.0, 10.0)
    assert parse_controls(None, {"no-store": True}) == Controls(no_store=True)


@pytest.mark.parametrize(("field", "param"), [
    ("yes", "cache"), ({"ttl": -1}, "cache.ttl"), ({"ttl": True}, "cache.ttl"), ({"ttl": "60"}, "cache.ttl"),
    ({"ttl": 10**9}, "cache.ttl"), ({"s-maxage": 0}, "cache.s-maxage"), ({"no-cache": "true"}, "cache.no-cache")])
def test_bad_controls_are_request_errors(field: object, param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_controls(None, field)
    assert caught.value.param == param


def test_entry_round_trip_and_garbage() -> None:
    entry = Entry(b'{"a":"b\\n"}', "anthropic", "messages", 12.5, "stop", Usage(3, 4), "p", "p/m")
    assert Entry.decode(entry.encode()) == entry
    assert Entry.decode(Entry(b"{}", "openai", "embeddings", 1.0, None, None, None, None).encode()) is not None
    for raw in (b"", b"no newline", b"{}\n", b"not json\n{}", b'{"v":1}\n{}', b'{"v":1,"d":"o","e":"c","t":"x",'
                b'"f":null,"u":null,"p":null,"dep":null}\n{}'):
        assert Entry.decode(raw) is None


def test_key_globs_only_match_cache_entries() -> None:
    assert key_glob("ns") == "labgate:ns:" + ENTRY_GLOB
    assert key_glob(None, "ab*") == "labgate:*:ab*"


def test_config_rejects_a_redis_cache_without_url_or_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from labgate.config.problems import ConfigError
    from labgate.config.schema import gateway
    from labgate.testing.gateway import config_from

    with pytest.raises(ConfigError, match="no Redis URL is set"):
        config_from({}, None, {"cache": {"backend": "redis"}})
    with pytest.raises(ConfigError, match="only used by backend: redis"):
        config_from({}, None, {"cache": {"backend": "memory", "url": "redis://127.0.0.1/0"}})
    monkeypatch.setattr(gateway, "find_spec", lambda name: None)  # the redis extra is not installed
    with pytest.raises(ConfigError, match=r"pip install 'labgate\[redis\]'"):
        config_from({}, None, {"state": {"url": "redis://127.0.0.1/0"}, "cache": {}})
    assert config_from({}, None, {"state": {"url": "redis://127.0.0.1/0"}, "cache": {"backend": "memory"}})
