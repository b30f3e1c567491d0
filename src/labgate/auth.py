"""API keys: constant-time checks; only a hash prefix of a key is ever kept."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from labgate.errors import AuthenticationError


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
