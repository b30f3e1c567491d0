"""The key ring: fail closed when the store cannot be read at start; rotation drops the old secret at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from labgate.auth import Auth
from labgate.errors import AuthenticationError
from labgate.keys import KeyAdmin, KeyRing, KeySpec
from labgate.store.sqlite import SQLiteStore

pytestmark = pytest.mark.asyncio


class DownStore:
    """A store whose database never answers."""

    display_url = "postgresql://down"

    async def open(self) -> None:
        raise OSError("connection refused")

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise OSError("connection refused")

    async def aclose(self) -> None:
        pass


async def test_an_unreadable_store_at_start_fails_closed() -> None:
    ring = KeyRing(DownStore(), refresh_s=0.05)  # type: ignore[arg-type]
    await ring.start()
    try:
        assert ring.enforced
        with pytest.raises(AuthenticationError):
            Auth([], keyring=ring).admit(None)
        assert Auth(["sk-master"], keyring=ring).admit("sk-master")[1] is None  # the master key still works
    finally:
        await ring.aclose()


class LateStore(DownStore):
    """A store that cannot be read at start (a sibling worker is still creating the file), then can: no key."""

    def __init__(self) -> None:
        self.up = False

    async def open(self) -> None:
        if not self.up:
            raise OSError("database is locked")

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if not self.up:
            raise OSError("database is locked")
        return []


async def test_a_store_that_answers_later_with_no_key_opens_the_gateway_again() -> None:
    store = LateStore()
    ring = KeyRing(store, refresh_s=0.02)  # type: ignore[arg-type]
    await ring.start()
    try:
        assert ring.enforced  # unknown: fail closed
        store.up = True
        for _ in range(500):  # a refresh or two (every 0.02 s)
            if not ring.enforced:
                break
            await asyncio.sleep(0.01)
        assert not ring.enforced  # read now, and there is no key: a keyless gateway is open again
        assert Auth([], keyring=ring).admit(None) == (None, None)
    finally:
        await ring.aclose()


async def test_rotation_and_revocation_reach_a_ring_on_refresh(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    admin = KeyAdmin(store)
    ring = KeyRing(SQLiteStore(tmp_path / "h.db"))
    await ring.start()
    try:
        assert not ring.enforced  # no key yet: a keyless gateway stays open
        secret, key = await admin.create(KeySpec(name="k", models=("a*",)), actor="test")
        await ring.refresh()
        assert ring.check(secret, time.time()) == key
        new_secret, _ = await admin.rotate("k", actor="test")
        await ring.refresh()
        assert ring.check(secret, time.time()) is None and ring.check(new_secret, time.time()) is not None
        await admin.revoke(key.id, actor="test")
        await ring.refresh()
        with pytest.raises(AuthenticationError, match="revoked"):
            ring.check(new_secret, time.time())
    finally:
        await ring.aclose()
        await store.aclose()


async def test_a_database_nobody_created_is_not_created_and_is_read_once_it_exists(tmp_path: Path) -> None:
    path = tmp_path / "later.db"
    ring = KeyRing(SQLiteStore(path), refresh_s=0.02)
    await ring.start()
    try:
        assert not path.exists() and not ring.enforced  # no file made for the ring (store.capture: none)
        store = SQLiteStore(path)  # what `labgate keys create` does: it creates the file
        await store.open()
        try:
            secret, key = await KeyAdmin(store).create(KeySpec(name="late"), actor="test")
        finally:
            await store.aclose()
        for _ in range(250):  # the poll opens the file once it exists
            if ring.enforced:
                break
            await asyncio.sleep(0.02)
        assert ring.check(secret, time.time()) == key
    finally:
        await ring.aclose()


async def test_the_digest_memo_keeps_only_secrets_that_named_a_key_and_stays_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import labgate.keys as keys

    monkeypatch.setattr(keys, "DIGEST_MEMO", 2)
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    admin = KeyAdmin(store)
    ring = KeyRing(SQLiteStore(tmp_path / "h.db"))
    await ring.start()
    try:
        made = [await admin.create(KeySpec(name=f"k{i}"), actor="test") for i in range(3)]
        await ring.refresh()
        for n in range(50):  # guesses (well-formed, unknown) are hashed and dropped: they never fill the memo
            assert ring.check(f"{keys.PREFIX}guess{n}", time.time()) is None
        assert ring._digests == {}
        hashed = []
        for secret, key in made:
            assert ring.check(secret, time.time()) == key
            assert ring.check(secret, time.time()) == key  # the second time from the memo
            hashed.append(keys.digest(secret))
        assert len(ring._digests) <= 2 and set(ring._digests.values()) <= set(hashed)
        secret, key = made[2]
        await admin.revoke(key.id, actor="test")  # a memoised secret is refused as soon as the ring knows
        await ring.refresh()
        with pytest.raises(AuthenticationError, match="revoked"):
            ring.check(secret, time.time())
    finally:
        await ring.aclose()
        await store.aclose()
