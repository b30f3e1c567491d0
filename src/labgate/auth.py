"""API keys: the master key (constant-time checks) and virtual keys (labgate/keys.py).

Only a hash prefix of the master key, or a virtual key's id, is ever kept in records.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING

from labgate.errors import AuthenticationError, PermissionDeniedError
from labgate.keys import PREFIX

if TYPE_CHECKING:
    from labgate.keys import KeyRing, VirtualKey

_VIRTUAL_NOT_ADMIN = ("A virtual key (lg-…) cannot use the admin API: /admin/* needs the master key "
                      "(auth.master_key_env).")
_MISSING = "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."


class Auth:
    """The keys that may call the gateway. No master key and no virtual key means no auth.

    ``check`` is the master key alone (the admin API); ``admit`` is any API call: the
    master key or a virtual key from ``keyring`` (None: virtual keys are off).
    """

    __slots__ = ("_ids", "_keys", "keyring", "master")

    def __init__(self, keys: list[str], keyring: KeyRing | None = None) -> None:
        self._keys = tuple(k.encode() for k in keys if k)
        self._ids = {k: key_id(k) for k in keys if k}  # each master key's id, hashed once
        self.master = bool(self._keys)
        self.keyring = keyring

    @property
    def enabled(self) -> bool:
        return self.master or (self.keyring is not None and self.keyring.enforced)

    def check(self, presented: str | None) -> str | None:
        """The master key: accept or raise; returns the key's id (a hash prefix) for records."""
        if not self.master:
            return None
        if not presented:
            raise AuthenticationError(_MISSING)
        if not self._matches(presented):
            raise AuthenticationError("Incorrect API key provided.")
        return self._ids[presented]

    def admit(self, presented: str | None) -> tuple[str | None, VirtualKey | None]:
        """An API call: (the key's id for records, the virtual key or None for the master key / no auth)."""
        ring = self.keyring
        keyed = ring is not None and ring.enforced  # virtual keys are checked (else the master key alone)
        if self.master:
            if presented:  # _matches(), inline (no call per request): compared against every key, whichever matches
                candidate, matched = presented.encode(), False
                for known in self._keys:
                    matched |= hmac.compare_digest(candidate, known)
                if matched:
                    return self._ids[presented], None
            if not keyed:
                return self.check(presented), None  # raises what is wrong
        elif not keyed:
            return None, None
        if not presented:
            raise AuthenticationError(_MISSING)
        key = ring.check(presented)  # type: ignore[union-attr]  # keyed: a ring; the clock read if the key expires
        if key is None:
            raise AuthenticationError("Incorrect API key provided.")
        return key.id, key

    def _matches(self, presented: str) -> bool:
        candidate = presented.encode()
        # compare against every key so the time taken does not depend on which one matched
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched


def admit_admin(auth: Auth, headers: Mapping[str, str], client: str | None) -> None:
    """Admin routes: the master key when one is configured; without one, loopback clients only
    (config and history hold what an open network port should not hand out)."""
    if auth.master:
        presented = presented_key(headers)
        try:
            auth.check(presented)
        except AuthenticationError:
            if presented and presented.startswith(PREFIX):
                raise AuthenticationError(_VIRTUAL_NOT_ADMIN, code="virtual_key_not_admin") from None
            raise
    elif not _loopback(client):
        raise PermissionDeniedError("This gateway has no master key (auth.master_key_env), so its admin API "
                                    "answers loopback clients only.")


def _loopback(client: str | None) -> bool:
    if client is None:
        return True  # not an IP socket (a Unix socket): local by construction
    try:
        return ipaddress.ip_address(client.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def key_id(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent, from ``Authorization: Bearer`` or ``x-api-key``."""
    value = headers.get("authorization")
    if value is not None:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return headers.get("x-api-key") or None
