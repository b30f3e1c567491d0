"""The stored form of a cache entry."""

from __future__ import annotations

from labgate.providers.base import Usage
from labgate.state.entry import Entry


def test_entry_round_trip_and_garbage() -> None:
    entry = Entry(b'{"a":"b\\n"}', "anthropic", "messages", 12.5, "stop", Usage(3, 4), "p", "p/m")
    assert Entry.decode(entry.encode()) == entry
    assert Entry.decode(Entry(b"{}", "openai", "embeddings", 1.0, None, None, None, None).encode()) is not None
    for raw in (b"", b"no newline", b"{}\n", b"not json\n{}", b'{"v":1}\n{}', b'{"v":1,"d":"o","e":"c","t":"x",'
                b'"f":null,"u":null,"p":null,"dep":null}\n{}'):
        assert Entry.decode(raw) is None
