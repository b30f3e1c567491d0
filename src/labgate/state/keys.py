"""What identifies a cache entry: ``labgate:{namespace}:{hash}``, the hash over what can change the answer."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from labgate.state.base import KEY_PREFIX

# body fields that cannot change the answer: left out of the key
NOT_KEYED = frozenset({"model", "stream", "stream_options", "user", "cache", "metadata", "store",
                       "safety_identifier", "prompt_cache_key"})
HASH_HEX = 32  # hex characters of a key's hash (BLAKE2b, 16 bytes)
ENTRY_GLOB = "[0-9a-f]" * HASH_HEX  # matches the hash part of every cache key, and nothing else
_EXACT_INT = 2**53  # floats up to this are integers exactly; orjson parses bigger integers as floats


def key_glob(namespace: str | None, pattern: str | None = None) -> str:
    """The glob matching cache keys of ``namespace`` (all namespaces if None) whose hash matches ``pattern``."""
    return f"{KEY_PREFIX}:{namespace or '*'}:{pattern or ENTRY_GLOB}"


def key_hash(endpoint: str, target: str, body: dict[str, Any]) -> str:
    """The hash part of a key: the endpoint, the route's target and the canonical body less :data:`NOT_KEYED`."""
    # top-level 0.0 and 0 are the same parameter (temperature: 0 / 0.0); bigger floats stay floats,
    # since int(1e300) does not fit the 64 bits orjson serialises
    keyed = {k: (int(v) if type(v) is float and v.is_integer() and -_EXACT_INT <= v <= _EXACT_INT else v)
             for k, v in body.items() if k not in NOT_KEYED}
    material = orjson.dumps([endpoint, target, keyed], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(material, digest_size=HASH_HEX // 2).hexdigest()
