"""Checks of request body fields, shared by every API surface."""

from __future__ import annotations

MAX_MODEL_CHARS = 256  # a longer 'model' is refused (400, param: model)


def is_int(v: object) -> bool:
    """An integer that is not a bool (JSON true is not 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def model_problem(model: object) -> str | None:
    """What is wrong with a body's ``model`` (None: nothing), checked once at the edge on every surface.

    A model name travels on: into routing (``provider/<anything>``), response headers
    (``x-labgate-deployment``), logs, metrics labels, history and the CLI's tables. So it must be a
    non-empty string of printable characters (no CR/LF, no control or format characters, no line or
    paragraph separators) of at most :data:`MAX_MODEL_CHARS` characters.
    """
    if not isinstance(model, str) or not model:
        return "must be a non-empty string"
    if len(model) > MAX_MODEL_CHARS:
        return f"must be at most {MAX_MODEL_CHARS} characters; got {len(model)}"
    if not model.isprintable():
        bad = next(c for c in model if not c.isprintable())
        return f"must hold only printable characters; got {bad!r} at position {model.index(bad)}"
    return None
