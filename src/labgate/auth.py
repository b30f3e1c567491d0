"""API keys: constant-time checks; only a hash prefix of a key is ever kept."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

from labgate.errors import AuthenticationError, PermissionDeniedError


class Auth:
    """The keys that may call the gateway. No keys configured means no auth."""

    __slots__ = ("_keys", "enabled")

    def __init__(self, keys: list[str]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)
        self.enabled = bool(self._keys)

    def check(self, presented: str | None) -> str | None:
        """Accept or raise; returns the key's id (a hash prefix) for records."""
        if not self.enabled:
            return None
        if not presented:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")
        candidate = presented.encode()
        # compare against every key so the time taken does not depend on which one matched
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise AuthenticationError("Incorrect API key provided.")
        return key_id(presented)


def admit_admin(auth: Auth, headers: Mapping[str, str], client: str | None) -> None:
    """Admin routes: the master key when one is configured; without one, loopback clients only
    (config and history hold what an open network port should not hand out)."""
    if auth.enabled:
        auth.check(presented_key(headers))
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
