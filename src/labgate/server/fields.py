"""Type checks for request body fields, shared by every API surface."""

from __future__ import annotations


def is_int(v: object) -> bool:
    """An integer that is not a bool (JSON true is not 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)
