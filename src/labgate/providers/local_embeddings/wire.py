"""The OpenAI embeddings wire format: what ``input`` may hold, and the reply body.

``input`` is a string, a list of strings, one token array (a list of ints)
or a list of token arrays. Token arrays are ids in the *model's* vocabulary:
decoded with its tokenizer (or refused, ``token_inputs: refuse``). Every
refusal is a :class:`RequestError` (400) naming the offending input.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from labgate.errors import RequestError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True, slots=True)
class Inputs:
    """A request's inputs: texts, or token arrays (never both)."""

    texts: list[str] | None = None
    tokens: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.tokens or ())


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_inputs(given: object, *, max_inputs: int) -> Inputs:
    """Check ``input``'s shape and count; raise :class:`RequestError` with the offending index."""
    if isinstance(given, str):
        if not given:
            raise RequestError("'input' must not be an empty string.", param="input")
        return Inputs(texts=[given])
    if not isinstance(given, list) or not given:
        raise RequestError("'input' is required: a string, an array of strings, or token arrays.",
                           param="input")
    if len(given) > max_inputs:
        raise RequestError(f"'input' has {len(given)} items; at most {max_inputs} per request.", param="input")
    first = given[0]
    if isinstance(first, str):
        for i, item in enumerate(given):
            if not isinstance(item, str):
                raise RequestError(f"'input[{i}]' must be a string like the other items; got "
                                   f"{type(item).__name__}.", param=f"input[{i}]")
            if not item:
                raise RequestError(f"'input[{i}]' must not be an empty string.", param=f"input[{i}]")
        return Inputs(texts=given)
    if _is_token(first):  # one token array
        if not all(_is_token(t) for t in given):
            raise RequestError("'input' mixes token ids with other values.", param="input")
        return Inputs(tokens=[given])
    if isinstance(first, list):
        for i, item in enumerate(given):
            if not isinstance(item, list) or not item or not all(_is_token(t) for t in item):
                raise RequestError(f"'input[{i}]' must be a non-empty array of token ids like the other items.",
                                   param=f"input[{i}]")
        return Inputs(tokens=given)
    raise RequestError(f"'input[0]' must be a string or a token id; got {type(first).__name__}.",
                       param="input[0]")


def reply_body(rows: np.ndarray, *, model: str, prompt_tokens: int, encoding: str) -> bytes:
    """``{"object": "list", "data": [...], "model", "usage"}``; base64 is little-endian float32, as OpenAI's."""
    import numpy as np

    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    if encoding == "base64":
        little = rows.astype("<f4", copy=False)
        data: list[dict[str, Any]] = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(row.tobytes()).decode()}
            for i, row in enumerate(little)]
        return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage},
                        option=orjson.OPT_SERIALIZE_NUMPY)
