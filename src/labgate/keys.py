"""Virtual keys: issued by the gateway, stored hashed in the history database, checked per request.

A key's secret (``lg-`` + 43 URL-safe characters: 256 random bits) is shown
once, when it is created or rotated. The database keeps its SHA-256 (a fast
hash is right for a 256-bit random secret: there is no dictionary to try)
and the last four characters as a hint. The request path looks the hash up
in an in-memory :class:`KeyRing`; every process re-reads the rows changed
since its last look every ``auth.keys_refresh_s`` (default 0.5 s), so a key
revoked by one worker or replica is refused by all of them within a second.

:class:`KeyAdmin` does the writes (``labgate keys``, ``/admin/keys``) and
appends each to the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import orjson

from labgate.audit import record_action
from labgate.errors import AuthenticationError, PermissionDeniedError, RecordNotFoundError, RequestError
from labgate.store import resolve_url, store_for
from labgate.store.base import Store
from labgate.store.schema import KEYS_TABLE
from labgate.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from labgate.config.load import Config

log = logging.getLogger("labgate.keys")

PREFIX = "lg-"
SECRET_BYTES = 32  # 256 random bits per key
DIGEST_MEMO = 4096  # presented secrets whose digest is kept (past it the memo starts again)
REFRESH_S = 0.5  # default auth.keys_refresh_s: revocation reaches every process within about this
CLOCK_SLACK_S = 5.0  # rows re-read around the last look: replicas' clocks and commit delays differ by less
MAX_NAME = 128
MAX_MODELS = 256
MAX_NUMBER = 1e15  # times (Unix seconds, durations) and budgets above this are refused
Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[str, ...] = ("day", "week", "month", "total")
_COLUMNS = ("id", "hash", "hint", "name", "project", "team", "models", "expires_at", "revoked_at",
            "rpm", "tpm", "budget_usd", "budget_period", "created_at", "updated_at")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """One key as the request path sees it: never its secret."""

    id: str
    name: str
    hint: str
    project: str | None = None
    team: str | None = None
    models: tuple[str, ...] | None = None  # globs; None: every model
    expires_at: float | None = None  # Unix seconds
    revoked_at: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str = "month"
    created_at: float = 0.0
    updated_at: float = 0.0
    pattern: re.Pattern[str] | None = None  # the globs compiled into one expression

    def allows(self, model: str) -> bool:
        return self.pattern is None or self.pattern.fullmatch(model) is not None

    def public(self) -> dict[str, Any]:
        """What admin listings show (no hash, no secret)."""
        return {"id": self.id, "name": self.name, "key_hint": "lg-…" + self.hint, "project": self.project,
                "team": self.team, "models": list(self.models) if self.models is not None else None,
                "expires_at": self.expires_at, "revoked_at": self.revoked_at, "rpm": self.rpm, "tpm": self.tpm,
                "budget_usd": self.budget_usd, "budget_period": self.budget_period,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "status": self.status(time.time())}

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


def compile_models(models: tuple[str, ...] | None) -> re.Pattern[str] | None:
    if models is None:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(m)})" for m in models) or "(?!)")


def _from_row(row: dict[str, Any]) -> tuple[str, VirtualKey]:
    models = tuple(orjson.loads(row["models"])) if row["models"] is not None else None
    key = VirtualKey(id=row["id"], name=row["name"], hint=row["hint"], project=row["project"], team=row["team"],
                     models=models, expires_at=row["expires_at"], revoked_at=row["revoked_at"], rpm=row["rpm"],
                     tpm=row["tpm"], budget_usd=row["budget_usd"], budget_period=row["budget_period"] or "month",
                     created_at=row["created_at"], updated_at=row["updated_at"], pattern=compile_models(models))
    return row["hash"], key


class KeyRing:
    """Every virtual key of the database, in memory, refreshed in the background.

    ``enforced`` turns true once any key exists (even a revoked one): from then on a
    gateway without a master key refuses requests without a valid key.
    """

    def __init__(self, store: Store, *, refresh_s: float = REFRESH_S) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.by_hash: dict[str, VirtualKey] = {}
        self.hash_of: dict[str, str] = {}  # key id → current hash (a rotation replaces it)
        self.enforced = False
        self._seen = 0.0  # the newest updated_at read so far
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self._blind = False  # failed closed at start: enforced until the first successful read
        # a presented secret → its digest, for secrets that named a key (a guess never enters; bounded):
        # the same client's key is not hashed again per request. A digest never goes stale (a rotated or
        # revoked key's entry leads to no key, or to the revoked one), so nothing here is invalidated.
        self._digests: dict[str, str] = {}

    def check(self, presented: str, now: float | None = None) -> VirtualKey | None:
        """The key for a presented secret; raises for a revoked or expired one; None: not a virtual key.
        ``now``: the wall clock, read only when the key expires (None: read it then)."""
        hashed = self._digests.get(presented)  # only secrets that named a key (all start with PREFIX)
        if hashed is None:
            if not presented.startswith(PREFIX):
                return None
            hashed = digest(presented)
            if hashed in self.by_hash:
                if len(self._digests) >= DIGEST_MEMO:
                    self._digests.clear()
                self._digests[presented] = hashed
        key = self.by_hash.get(hashed)
        if key is None:
            return None
        if key.revoked_at is not None:
            raise AuthenticationError(f"This API key ({key.name!r}) was revoked.", code="key_revoked")
        if key.expires_at is not None and (time.time() if now is None else now) >= key.expires_at:
            raise AuthenticationError(f"This API key ({key.name!r}) expired.", code="key_expired")
        return key

    async def start(self) -> None:
        """Read every key, then keep refreshing. A store that cannot be read now fails closed: virtual
        keys are refused (the master key still works) until the first read succeeds."""
        try:
            if not self._not_created():
                await self.store.open()
                self._opened = True
                await self.refresh()
        except Exception as exc:
            log.error("virtual keys: cannot read the key table (%s); refusing requests without a valid key "
                      "until it answers", exc)
            self.enforced = self._blind = True
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="labgate-keys")

    def _not_created(self) -> bool:
        """A SQLite file nobody created yet holds no key: it is not created for them (``store.capture: none``
        keeps no file); ``labgate keys create`` creates it, and the next refresh opens it."""
        return isinstance(self.store, SQLiteStore) and not self.store.path.exists()

    async def refresh(self) -> None:
        rows = await self.store.fetch(f"SELECT {', '.join(_COLUMNS)} FROM {KEYS_TABLE} WHERE updated_at >= ?",
                                      (self._seen - CLOCK_SLACK_S,))
        for row in rows:
            self.apply(row)
        if self._blind:  # read at last (a sibling worker was creating the file, the database was down)
            self._blind = False
            self.enforced = bool(self.by_hash)  # the keys decide again: none means no auth, as at a clean start
            log.warning("virtual keys: the key table answers again (%d keys)", len(self.by_hash))

    def apply(self, row: dict[str, Any]) -> None:
        hashed, key = _from_row(row)
        old = self.hash_of.get(key.id)
        if old is not None and old != hashed:
            self.by_hash.pop(old, None)  # rotated: the old secret is gone at once
        self.by_hash[hashed] = key
        self.hash_of[key.id] = hashed
        self.enforced = True
        self._seen = max(self._seen, key.updated_at)

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                if not self._opened:
                    if self._not_created():
                        continue
                    await self.store.open()
                    self._opened = True
                await self.refresh()
            except Exception as exc:  # the store is down: keep the keys we have, say so once
                if not failing:
                    log.warning("virtual keys: cannot refresh from the store (%s); serving the last known keys", exc)
                failing = True
            else:
                if failing:
                    log.info("virtual keys: refreshing from the store again")
                failing = False

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._opened:
            await self.store.aclose()
            self._opened = False


async def open_keyring(config: Config) -> KeyRing | None:
    """The process's virtual keys, read from the history database (None: ``auth.virtual_keys: false``)."""
    auth = config.gateway.auth
    if not auth.virtual_keys:
        return None
    ring = KeyRing(store_for(resolve_url(config.gateway.store.url, source=config.source)),
                   refresh_s=auth.keys_refresh_s)
    await ring.start()
    return ring


def check_model(key: VirtualKey, model: str) -> None:
    if not key.allows(model):
        raise PermissionDeniedError(f"This API key ({key.name!r}) may not use model {model!r}.",
                                    code="model_not_allowed")


@dataclass(frozen=True, slots=True)
class KeySpec:
    """The settable fields of a key (create, or update with ``None`` meaning unchanged)."""

    name: str | None = None
    project: str | None = None
    team: str | None = None
    models: tuple[str, ...] | None = None
    expires_at: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> KeySpec:
        """From an admin API body; raises :class:`RequestError` naming the bad field."""
        unknown = set(data) - {"name", "project", "team", "models", "expires_at", "expires_in_s", "rpm", "tpm",
                               "budget_usd", "budget_period"}
        if unknown:
            raise RequestError(f"Unknown key field(s): {', '.join(sorted(unknown))}.", param=sorted(unknown)[0])
        name = _text(data, "name")
        models = data.get("models")
        if models is not None and (not isinstance(models, list) or len(models) > MAX_MODELS
                                   or not all(isinstance(m, str) and 0 < len(m) <= 256 for m in models)):
            raise RequestError(f"'models' must be a list of at most {MAX_MODELS} model names or globs.",
                               param="models")
        expires = _number(data, "expires_at")
        if (ttl := _number(data, "expires_in_s")) is not None:
            expires = time.time() + ttl
        period = data.get("budget_period")
        if period is not None and period not in PERIODS:
            raise RequestError(f"'budget_period' must be one of {', '.join(PERIODS)}.", param="budget_period")
        return cls(name=name, project=_text(data, "project"), team=_text(data, "team"),
                   models=tuple(models) if models is not None else None, expires_at=expires,
                   rpm=_count(data, "rpm"), tpm=_count(data, "tpm"), budget_usd=_number(data, "budget_usd"),
                   budget_period=period)


def _text(data: dict[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_NAME):
        raise RequestError(f"'{field}' must be a string of 1 to {MAX_NAME} characters.", param=field)
    return value


def _number(data: dict[str, Any], field: str) -> float | None:
    value = data.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 <= value <= MAX_NUMBER):  # NaN fails the comparison too
        raise RequestError(f"'{field}' must be a number from 0 to {MAX_NUMBER:g}.", param=field)
    return None if value is None else float(value)


def _count(data: dict[str, Any], field: str) -> int | None:
    value = data.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**12):
        raise RequestError(f"'{field}' must be a whole number from 1 to 10^12.", param=field)
    return value


class KeyAdmin:
    """Creates, lists, revokes and rotates keys in a store (the CLI's and the admin API's one place)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def list(self, *, include_revoked: bool = True) -> list[VirtualKey]:
        rows = await self.store.fetch(f"SELECT {', '.join(_COLUMNS)} FROM {KEYS_TABLE} ORDER BY created_at")
        keys = [_from_row(r)[1] for r in rows]
        return [k for k in keys if include_revoked or k.revoked_at is None]

    async def get(self, ident: str) -> VirtualKey:
        """By id, or by name when the name is unique."""
        rows = await self.store.fetch(f"SELECT {', '.join(_COLUMNS)} FROM {KEYS_TABLE} WHERE id = ? OR name = ?",
                                      (ident, ident))
        exact = [r for r in rows if r["id"] == ident] or rows
        if not exact:
            raise RecordNotFoundError(f"No API key with id or name {ident!r}.")
        if len(exact) > 1:
            raise RequestError(f"Several keys are named {ident!r}: give the key's id.", param="key")
        return _from_row(exact[0])[1]

    async def create(self, spec: KeySpec, *, actor: str) -> tuple[str, VirtualKey]:
        """A new key: returns its secret (shown once) and the stored key."""
        if spec.name is None:
            raise RequestError("A key needs a 'name'.", param="name")
        secret, now = PREFIX + secrets.token_urlsafe(SECRET_BYTES), time.time()
        key = VirtualKey(id="key_" + secrets.token_hex(8), name=spec.name, hint=secret[-4:],
                         project=spec.project, team=spec.team, models=spec.models, expires_at=spec.expires_at,
                         rpm=spec.rpm, tpm=spec.tpm, budget_usd=spec.budget_usd,
                         budget_period=spec.budget_period or "month", created_at=now, updated_at=now,
                         pattern=compile_models(spec.models))
        await self.store.execute(
            f"INSERT INTO {KEYS_TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            (key.id, digest(secret), key.hint, key.name, key.project, key.team, _models(key.models),
             key.expires_at, None, key.rpm, key.tpm, key.budget_usd, key.budget_period, now, now))
        await record_action(self.store, actor, "key.create", key.id, None, key.public())
        return secret, key

    async def update(self, ident: str, spec: KeySpec, *, actor: str) -> VirtualKey:
        """Change limits, budget, models, expiry, tags or name (the secret stays)."""
        before = await self.get(ident)
        changes = {f: getattr(spec, f) for f in ("name", "project", "team", "models", "expires_at", "rpm", "tpm",
                                                  "budget_usd", "budget_period") if getattr(spec, f) is not None}
        after = replace(before, **changes, updated_at=time.time())
        after = replace(after, pattern=compile_models(after.models))
        await self.store.execute(
            f"UPDATE {KEYS_TABLE} SET name = ?, project = ?, team = ?, models = ?, expires_at = ?, rpm = ?, "
            "tpm = ?, budget_usd = ?, budget_period = ?, updated_at = ? WHERE id = ?",
            (after.name, after.project, after.team, _models(after.models), after.expires_at, after.rpm, after.tpm,
             after.budget_usd, after.budget_period, after.updated_at, after.id))
        await record_action(self.store, actor, "key.update", after.id, before.public(), after.public())
        return after

    async def revoke(self, ident: str, *, actor: str) -> VirtualKey:
        before = await self.get(ident)
        now = time.time()
        await self.store.execute(f"UPDATE {KEYS_TABLE} SET revoked_at = ?, updated_at = ? WHERE id = ?",
                                 (before.revoked_at or now, now, before.id))
        after = replace(before, revoked_at=before.revoked_at or now, updated_at=now)
        await record_action(self.store, actor, "key.revoke", after.id, before.public(), after.public())
        return after

    async def rotate(self, ident: str, *, actor: str) -> tuple[str, VirtualKey]:
        """A new secret for the same key (id, limits, spend); the old secret stops working at once."""
        before = await self.get(ident)
        if before.revoked_at is not None:
            raise RequestError(f"Key {before.id} is revoked; create a new one.", param="key")
        secret, now = PREFIX + secrets.token_urlsafe(SECRET_BYTES), time.time()
        await self.store.execute(f"UPDATE {KEYS_TABLE} SET hash = ?, hint = ?, updated_at = ? WHERE id = ?",
                                 (digest(secret), secret[-4:], now, before.id))
        after = replace(before, hint=secret[-4:], updated_at=now)
        await record_action(self.store, actor, "key.rotate", after.id, before.public(), after.public())
        return secret, after


def _models(models: tuple[str, ...] | None) -> str | None:
    return None if models is None else orjson.dumps(list(models)).decode()
