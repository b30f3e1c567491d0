"""What a request asks of the cache: ``cache-control`` and the LiteLLM-compatible body field ``cache``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from labgate.errors import RequestError

MAX_REQUEST_TTL_S = 30 * 24 * 3600.0  # the most a request's own ``cache.ttl`` may ask for
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


@dataclass(frozen=True, slots=True)
class Controls:
    no_cache: bool = False  # skip the lookup (the fresh answer replaces the entry)
    no_store: bool = False  # do not store this answer
    ttl: float | None = None  # store it for this long instead of the configured ttl_s
    max_age: float | None = None  # accept only an entry younger than this


NONE = Controls()


def parse_controls(header: str | None, field: Any) -> Controls:
    """The controls in ``cache-control`` and the body's ``cache`` object; RequestError for a malformed one."""
    no_cache = no_store = False
    ttl = max_age = None
    if header:
        lowered = header.lower()
        no_cache = "no-cache" in lowered
        no_store = "no-store" in lowered
        found = _MAX_AGE.search(lowered)
        if found:
            max_age = float(found.group(1))
    if field is None:
        return Controls(no_cache, no_store, ttl, max_age) if header else NONE
    if not isinstance(field, dict):
        raise RequestError("'cache' must be an object such as {\"no-cache\": true, \"ttl\": 600}.", param="cache")
    for name in ("no-cache", "no-store"):
        if name in field and not isinstance(field[name], bool):
            raise RequestError(f"'cache.{name}' must be a boolean.", param=f"cache.{name}")
    no_cache = no_cache or field.get("no-cache") is True
    no_store = no_store or field.get("no-store") is True
    for name in ("ttl", "s-maxage"):
        value = field.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_REQUEST_TTL_S:
            raise RequestError(f"'cache.{name}' must be a number of seconds between 0 and {MAX_REQUEST_TTL_S:g}.",
                               param=f"cache.{name}")
        if name == "ttl":
            ttl = float(value)
        else:
            max_age = float(value)
    return Controls(no_cache, no_store, ttl, max_age)
