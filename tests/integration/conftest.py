"""Fixtures for integration tests against real engines.

``llamacpp`` (session scope): two real llama.cpp servers (xllamacpp) on a generated tiny GGUF.
    .chat_url   base URL (no ``/v1``), model alias ``tiny`` (``.chat_model``)
    .embed_url  base URL (no ``/v1``), embedding mode, alias ``tiny-embed`` (``.embed_model``)
Skips (with a reason) when xllamacpp or gguf cannot be imported; ``.ci/run`` turns that skip
into a failure.

``redis_url``: ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) once it answers PING; skips with the
reason (client not installed, server unreachable) otherwise, which ``.ci/run`` turns into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

UPSTREAMS = Path(__file__).resolve().parent.parent / "upstreams"


def _load_upstream_helper() -> ModuleType:
    name = "_labgate_upstreams_llamacpp"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, UPSTREAMS / "llamacpp.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def llamacpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        import gguf  # noqa: F401
        import xllamacpp  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"llama.cpp upstream unavailable: cannot import xllamacpp/gguf ({e}); "
                    "install with: pip install xllamacpp==2026.10.11549 gguf==0.19.0")
    helper = _load_upstream_helper()
    with helper.llamacpp_servers(tmp_path_factory.mktemp("llamacpp"), timeout=30.0) as servers:
        yield servers


# --- request history stores (tests/integration/test_store_*.py) ----------------------------------

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_admin(url: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def create_schema(url: str, schema: str) -> None:
    """``CREATE SCHEMA``: skips when nothing answers at ``url`` (no PostgreSQL: an absent service),
    fails when a server answers and refuses us (wrong role, password or database, no right to create a
    schema: a broken setup, which no skip may hide, in CI or not)."""
    import asyncpg

    shown = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)  # never print a password
    try:
        _pg_admin(url, f"CREATE SCHEMA {schema}")
    except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:  # refused, unreachable, starting up
        pytest.skip(f"PostgreSQL unreachable at {shown}: {type(exc).__name__}: {exc}")
    except asyncpg.PostgresError as exc:
        pytest.fail(f"PostgreSQL at {shown} answered but refused us ({type(exc).__name__}: {exc}): check the "
                    "role, password, database and CREATE right in DATABASE_URL", pytrace=False)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a fresh, empty schema (dropped afterwards).

    ``DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``); skips with the reason
    when asyncpg is missing or the server cannot be reached (``.ci/run`` turns that into a failure),
    and fails when the server answers but refuses us (:func:`create_schema`).
    """
    import os
    import uuid

    url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        pytest.skip("asyncpg is not installed: pip install 'labgate[postgres]'")
    schema = f"labgate_test_{uuid.uuid4().hex[:12]}"
    create_schema(url, schema)
    try:
        yield f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    finally:
        _pg_admin(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh history store: a SQLite file, and (integration) a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "history.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def redis_url() -> str:
    try:
        import redis
    except ImportError:
        pytest.skip("the redis client is not installed: pip install 'labgate[redis]'")
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        pytest.skip(f"Redis unreachable at {url}: {exc}")
    finally:
        client.close()
    return url


@pytest.fixture
def pg_schema_maker() -> Any:
    """:func:`create_schema`, for the tests of the fixture itself (tests/integration/test_services.py)."""
    return create_schema
