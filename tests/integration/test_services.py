"""The service fixtures tell an absent service (skip; a failure in CI) from a broken setup (always a failure)."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def outcome(make: Any, url: str) -> tuple[str, str]:
    """What the fixture does for ``url``: ("skip" | "fail", its message)."""
    schema = f"labgate_test_{uuid.uuid4().hex[:12]}"
    try:
        make(url, schema)
    except pytest.skip.Exception as exc:
        return "skip", str(exc)
    except pytest.fail.Exception as exc:
        return "fail", str(exc)
    raise AssertionError(f"{url} accepted CREATE SCHEMA {schema}")


def test_nothing_listening_is_unreachable(pg_schema_maker: Any) -> None:
    port = closed_port()
    kind, message = outcome(pg_schema_maker, f"postgresql://postgres:secret@127.0.0.1:{port}/test")
    assert (kind, message.startswith(f"PostgreSQL unreachable at postgresql://postgres:***@127.0.0.1:{port}/test: "),
            "secret" in message) == ("skip", True, False)


def test_a_wrong_role_or_database_is_a_failure_not_a_skip(pg_url: str, pg_schema_maker: Any) -> None:
    base = pg_url.split("?")[0]  # a server that answers (pg_url got its schema there)
    host = base.split("@", 1)[1].rsplit("/", 1)[0]
    for url, error in [(f"postgresql://labgate_no_such_role@{host}/test", "InvalidAuthorizationSpecificationError"),
                       (f"{base.rsplit('/', 1)[0]}/labgate_no_such_database", "InvalidCatalogNameError")]:
        kind, message = outcome(pg_schema_maker, url)
        assert (kind, f"answered but refused us ({error}: " in message) == ("fail", True), message


def test_no_right_to_create_a_schema_is_a_failure(pg_url: str, pg_schema_maker: Any) -> None:
    import asyncio

    import asyncpg

    base = pg_url.split("?")[0]
    role = f"labgate_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(base, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE ROLE {role} LOGIN"))  # no CREATE on the database
    try:
        scheme, rest = base.split("://", 1)
        kind, message = outcome(pg_schema_maker, f"{scheme}://{role}@{rest.split('@', 1)[1]}")
    finally:
        asyncio.run(admin(f"DROP ROLE {role}"))
    assert (kind, "answered but refused us (InsufficientPrivilegeError: " in message) == ("fail", True), message
