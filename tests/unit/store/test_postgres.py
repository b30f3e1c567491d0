"""The PostgreSQL store's pure parts (the server-backed tests are in tests/integration/test_store_postgres.py)."""

from __future__ import annotations

from labgate.store.postgres import PostgresStore, _clean, numbered


def test_placeholders_are_numbered() -> None:
    assert numbered("SELECT ? + ?, to_timestamp(?)") == "SELECT $1 + $2, to_timestamp($3)"


def test_nul_cleaning_touches_only_strings_that_need_it() -> None:
    assert _clean("a\x00b") == "a\ufffdb"
    assert _clean('["x\\u0000"]') == '["x\\ufffd"]'
    assert _clean("plain") == "plain"
    assert _clean(5) == 5


def test_display_url_hides_the_password() -> None:
    assert PostgresStore("postgresql://lab:s3cret@db:5432/h").display_url == "postgresql://lab:***@db:5432/h"
    assert PostgresStore("postgresql://postgres@127.0.0.1/test").display_url == "postgresql://postgres@127.0.0.1/test"
