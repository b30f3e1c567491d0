"""Reading an engine's own load: vLLM's Prometheus text, llama.cpp's /slots, and hostile answers."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.routing.engines import read_metrics, read_slots

VLLM = b"""# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
vllm:num_requests_waiting{engine="0",model_name="llama"} 7.0
vllm:gpu_cache_usage_perc{engine="0",model_name="llama"} 0.42
vllm:request_success_total{finished_reason="stop",model_name="llama"} 1234.0
"""


def test_vllm_metrics_sum_series_and_keep_the_fullest_cache() -> None:
    assert read_metrics(VLLM) == (5, 7, 0.42)
    newer = VLLM.replace(b"gpu_cache_usage_perc", b"kv_cache_usage_perc")
    assert read_metrics(newer) == (5, 7, 0.42)


def test_llamacpp_metrics_names_are_read_too() -> None:
    text = b"llamacpp:requests_processing 1\nllamacpp:requests_deferred 4\nllamacpp:kv_cache_usage_ratio 0.9\n"
    assert read_metrics(text) == (1, 4, 0.9)


@pytest.mark.parametrize("text", [
    b"", b"# only comments\n", b"vllm:num_requests_waiting 3\n",  # no running metric
    b"vllm:num_requests_running NaN\n", b"vllm:num_requests_running -1\n", b"vllm:num_requests_running +Inf\n",
    b"vllm:num_requests_running 1e12\n", b"vllm:num_requests_running{a=\"b\"}\n", b"vllm:num_requests_running lots\n",
])
def test_metrics_that_cannot_be_believed_are_refused(text: bytes) -> None:
    with pytest.raises(ValueError):
        read_metrics(text)


def test_llamacpp_slots_count_the_processing_ones() -> None:
    slots = [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}, {"id": 2, "is_processing": True}]
    assert read_slots(orjson.dumps(slots)) == (2, 3)


@pytest.mark.parametrize("body", [b"{}", b"[]", b"[1]", b'[{"is_processing": "yes"}]', b'[{"id": 0}]',
                                  orjson.dumps([{"is_processing": False}] * 5000)])
def test_slots_that_are_not_slots_are_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        read_slots(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000) | st.text(max_size=500).map(lambda t: ("vllm:num_requests_running " + t).encode()))
def test_any_bytes_give_a_reading_or_a_value_error(body: bytes) -> None:
    for read in (read_metrics, read_slots):
        try:
            result = read(body)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            continue
        assert all(v is None or (isinstance(v, (int, float)) and v >= 0) for v in result)


# ---------------------------------------------------------------- the parsers' edges and messages


@pytest.mark.parametrize(("text", "reading"), [
    (b"vllm:num_requests_running 3\n", (3, None, None)),  # nothing else reported: unknown, not zero
    (b"vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n", (0, 0, None)),  # idle is a reading
    (b"vllm:num_requests_running 1000000\n", (1_000_000, None, None)),  # the largest count believed
    (b"vllm:kv_cache_usage_perc 1.5\nvllm:num_requests_running 1\n", (1, None, 1.0)),  # usage capped at 1
    (b"vllm:request_success_total 9\nvllm:num_requests_running 2\n", (2, None, None)),  # other names skipped
    (b"vllm:num_requests_running 2 1700000000000\n", (2, None, None)),  # a timestamp after the value
    (b'vllm:num_requests_running{m="a b",n="{x}"} 4 1700000000000\n', (4, None, None)),  # braces, spaces
    (b'vllm:num_requests_running{m="\xff"} 5\n', (5, None, None)),  # not UTF-8 in a label: still read
])
def test_metrics_at_their_edges(text: bytes, reading: tuple[int, int | None, float | None]) -> None:
    assert read_metrics(text) == reading


@pytest.mark.parametrize(("text", "message"), [
    (b"vllm:num_requests_waiting 3\n", "no running-requests metric in the answer"),
    (b"vllm:num_requests_running{a=\"b\"}\n", "vllm:num_requests_running has no value"),
    (b"vllm:num_requests_running -12345678901234567890\n", "vllm:num_requests_running is -1234567890123456789"),
    (b"vllm:num_requests_running 1000001\n", "vllm:num_requests_running is 1e+06"),
])
def test_metrics_refused_say_why(text: bytes, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        read_metrics(text)
    assert str(refused.value) == message


def test_slots_from_one_to_4096() -> None:
    assert read_slots(b'[{"is_processing": true}]') == (1, 1)
    assert read_slots(orjson.dumps([{"is_processing": False}] * 4096)) == (0, 4096)


@pytest.mark.parametrize(("body", "message"), [
    (b"[]", "/slots is not a list of 1 to 4096 slots"),
    (b'[{"id": 0}]', "a slot without a boolean is_processing"),
])
def test_slots_refused_say_why(body: bytes, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        read_slots(body)
    assert str(refused.value) == message
