"""Request ids: cheap, unique per process start, and accepted from clients when sane."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping

_PREFIX = "req_" + os.urandom(6).hex()
_COUNTER = itertools.count(1)


def request_id(headers: Mapping[str, str]) -> str:
    """The client's ``x-request-id`` if it is short and printable, else a new id."""
    given = headers.get("x-request-id")
    if given and len(given) <= 128 and given.isprintable() and given.isascii():
        return given
    return f"{_PREFIX}{next(_COUNTER):010x}"
