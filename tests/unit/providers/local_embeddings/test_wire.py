"""The OpenAI embeddings format: every shape of ``input``, and the reply in float and base64."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgate.errors import RequestError
from labgate.providers.local_embeddings.wire import Inputs, parse_inputs, reply_body

EXTRA = "the [embeddings] extra is not installed: pip install -e '.[embeddings]'"
if TYPE_CHECKING:
    import numpy as np
else:
    np = pytest.importorskip("numpy", reason=EXTRA)


@pytest.mark.parametrize(("given_input", "expected"), [
    ("hello", Inputs(texts=["hello"])),
    (["a", "b"], Inputs(texts=["a", "b"])),
    ([1, 2, 3], Inputs(tokens=[[1, 2, 3]])),
    ([[1, 2], [3]], Inputs(tokens=[[1, 2], [3]])),
])
def test_accepted_shapes(given_input: object, expected: Inputs) -> None:
    assert parse_inputs(given_input, max_inputs=10) == expected


@pytest.mark.parametrize(("given_input", "message", "param"), [
    ("", "'input' must not be an empty string.", "input"),
    ([], "'input' is required: a string, an array of strings, or token arrays.", "input"),
    (None, "'input' is required: a string, an array of strings, or token arrays.", "input"),
    ({"text": "a"}, "'input' is required: a string, an array of strings, or token arrays.", "input"),
    (["a", ""], "'input[1]' must not be an empty string.", "input[1]"),
    (["a", 3], "'input[1]' must be a string like the other items; got int.", "input[1]"),
    (["a", None], "'input[1]' must be a string like the other items; got NoneType.", "input[1]"),
    ([1, "a"], "'input' mixes token ids with other values.", "input"),
    ([1, True], "'input' mixes token ids with other values.", "input"),
    ([[1], []], "'input[1]' must be a non-empty array of token ids like the other items.", "input[1]"),
    ([[1], ["a"]], "'input[1]' must be a non-empty array of token ids like the other items.", "input[1]"),
    ([1.5], "'input[0]' must be a string or a token id; got float.", "input[0]"),
    ([True], "'input[0]' must be a string or a token id; got bool.", "input[0]"),
    ([{"a": 1}], "'input[0]' must be a string or a token id; got dict.", "input[0]"),
    (["x"] * 11, "'input' has 11 items; at most 10 per request.", "input"),
])
def test_refused_shapes_name_the_input(given_input: object, message: str, param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_inputs(given_input, max_inputs=10)
    assert (caught.value.status, caught.value.message, caught.value.param) == (400, message, param)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                                max_size=3), max_leaves=12)


@given(JSON)
def test_any_json_value_is_accepted_or_refused_with_a_400(value: object) -> None:
    try:
        inputs = parse_inputs(value, max_inputs=3)
    except RequestError as exc:
        assert exc.status == 400 and exc.param is not None and exc.param.startswith("input")
        return
    items = inputs.texts if inputs.texts is not None else inputs.tokens
    assert items and 1 <= len(items) <= 3
    assert all(isinstance(t, str) and t for t in inputs.texts or ())
    assert all(ids and all(type(i) is int for i in ids) for ids in inputs.tokens or ())


def test_float_reply() -> None:
    rows = np.array([[0.5, -0.25], [1.0, 0.0]], dtype=np.float32)
    body = orjson.loads(reply_body(rows, model="m", prompt_tokens=7, encoding="float"))
    assert body == {"object": "list", "model": "m", "usage": {"prompt_tokens": 7, "total_tokens": 7},
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
                             {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}]}


def test_base64_reply_is_little_endian_float32_like_openai() -> None:
    rows = np.array([[0.1, -2.5, 3.0]], dtype=np.float32)
    body = orjson.loads(reply_body(rows, model="m", prompt_tokens=1, encoding="base64"))
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == rows[0].tolist()


def test_float_values_round_trip_to_the_same_float32() -> None:
    rows = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    body = orjson.loads(reply_body(rows, model="m", prompt_tokens=1, encoding="float"))
    assert np.array_equal(np.array([d["embedding"] for d in body["data"]], dtype=np.float32), rows)
