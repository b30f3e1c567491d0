"""Record → row: what each capture mode keeps, and reading answers out of bodies and streams."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from labgate.errors import AttemptFailure, UpstreamStatusError
from labgate.providers.base import Usage
from labgate.record import RequestRecord
from labgate.store.capture import answer, build_row, normalized_prompt
from labgate.store.schema import NAMES

CHAT = {"model": "m1", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "  What is\n the  CAPITAL of France? "}],
        "temperature": 0.2, "max_tokens": 64, "user": "alice@example.com", "stop": ["\n\n"],
        "tools": [{"type": "function", "function": {"name": "lookup"}}], "reasoning_effort": "low",
        "metadata": {"project": "lab-a", "tags": "exp-1, blue"}, "stream": False}
REPLY = orjson.dumps({"id": "c1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}]})


def record(**fields: Any) -> RequestRecord:
    rec = RequestRecord("req-1", "chat", "10.0.0.7", "client-7", started=100.0, timestamp=1_700_000_000.5)
    rec.key_id, rec.model, rec.provider, rec.deployment = "key-abc", "m1", "p1", "p1/m1"
    rec.attempts, rec.usage, rec.finish_reason = 2, Usage(12, 3), "stop"
    rec.first_byte, rec.finished = 100.05, 100.25
    rec.failures.append(AttemptFailure("p0/m1", UpstreamStatusError("p0 answered 503", upstream_status=503)))
    rec.payload, rec.reply = CHAT, REPLY
    for name, value in fields.items():
        setattr(rec, name, value)
    return rec


def as_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    assert len(row) == len(NAMES)
    return dict(zip(NAMES, row, strict=True))


COMMON = {
    "request_id": "req-1", "timestamp": 1_700_000_000.5, "endpoint": "chat", "key_id": "key-abc", "model": "m1",
    "provider": "p1", "deployment": "p1/m1", "experiment": None, "variant": None, "stream": False,
    "temperature": 0.2, "max_tokens": 64, "finish_reason": "stop", "status": 200, "outcome": "ok",
    "error_type": None, "error": None, "response_time_ms": 250.0, "ttft_ms": 50.0, "prompt_tokens": 12,
    "completion_tokens": 3, "tokens_used": 15, "cost": None, "cache_hit": False, "attempts": 2,
    "failed_attempts": '[{"deployment":"p0/m1","error":"upstream_server_error","message":"p0 answered 503"}]',
    "client_ip": "10.0.0.7", "tags": '["exp-1","blue"]', "metadata": '{"project":"lab-a","tags":"exp-1, blue"}',
    "client_request_id": "client-7", "cache": None, "cache_bytes": None, "trace_id": None, "routing": None,
}


def test_full_capture_keeps_content_in_schema_order() -> None:
    row = as_dict(build_row(record(), capture="full", client_ip=True))
    assert row == {
        **COMMON, "capture": "full",
        "messages": orjson.dumps(CHAT["messages"]).decode(),
        "parameters": orjson.dumps({k: v for k, v in CHAT.items()
                                    if k not in ("model", "messages", "stream")}).decode(),
        "response": "Paris.", "tool_calls": None, "prompt": "what is the capital of france?",
    }


def test_metadata_capture_keeps_no_text() -> None:
    row = as_dict(build_row(record(), capture="metadata", client_ip=False))
    assert row == {**COMMON, "capture": "metadata", "client_ip": None, "messages": None, "response": None,
                   "tool_calls": None, "prompt": None,
                   "parameters": '{"temperature":0.2,"max_tokens":64,"reasoning_effort":"low"}'}


def test_a_record_that_never_parsed() -> None:
    rec = RequestRecord("req-2", "chat", None, started=5.0, timestamp=1.0)
    rec.status, rec.outcome, rec.error_type, rec.error_message = 401, "error", "invalid_api_key", "Missing API key"
    rec.finished = 5.001
    assert as_dict(build_row(rec, capture="full", client_ip=True)) == {
        **dict.fromkeys(NAMES), "request_id": "req-2", "timestamp": 1.0, "endpoint": "chat", "stream": False,
        "capture": "full", "status": 401, "outcome": "error", "error_type": "invalid_api_key",
        "error": "Missing API key", "response_time_ms": 1.0, "cache_hit": False, "attempts": 0}


def test_unreadable_content_costs_the_content_not_the_record(caplog: pytest.LogCaptureFixture) -> None:
    weird = record(payload={"model": "m1", "messages": [{"role": "user", "content": {"odd": object()}}]})
    row = as_dict(build_row(weird, capture="full", client_ip=True))
    assert (row["messages"], row["response"], row["status"]) == (None, None, 200)
    assert "could not read the content of request req-1" in caplog.text


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\n\n" for e in events)


def delta(content: str | None = None, tool_calls: list[dict[str, Any]] | None = None,
          index: int = 0) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if content is not None:
        d["content"] = content
    if tool_calls is not None:
        d["tool_calls"] = tool_calls
    return {"choices": [{"index": index, "delta": d}]}


def test_stream_text_joins_choice_zero_and_skips_a_torn_last_event() -> None:
    data = sse(delta(""), delta("Hel"), delta("other", index=1), delta("lo"), "[DONE]")
    rec = record(reply=None, chunks=[data[:37], data[37:], b'data: {"choices": [{"index": 0, "delta": {"con'])
    assert answer(rec) == ("Hello", None)


def test_stream_tool_calls_are_merged_by_index() -> None:
    data = sse(
        delta(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "lookup", "arguments": ""}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"q":'}}]),
        delta(tool_calls=[{"index": 1, "id": "call_2", "function": {"name": "time", "arguments": "{}"}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"x"}'}}]),
        "[DONE]")
    assert answer(record(reply=None, chunks=[data])) == (None, [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}])


def test_answers_in_other_shapes() -> None:
    completion = orjson.dumps({"choices": [{"index": 0, "text": "42"}]})
    assert answer(record(reply=completion)) == ("42", None)
    tool = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    chat_tools = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [tool]}}]})
    assert answer(record(reply=chat_tools)) == (None, [tool])
    anthropic = orjson.dumps({"content": [{"type": "text", "text": "Bon"}, {"type": "text", "text": "jour"},
                                          {"type": "tool_use", "id": "tu1", "name": "f", "input": {}}]})
    assert answer(record(reply=anthropic)) == ("Bonjour", [{"type": "tool_use", "id": "tu1", "name": "f",
                                                           "input": {}}])
    anthropic_stream = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n')
    assert answer(record(reply=None, chunks=[anthropic_stream])) == ("Hi", None)
    assert answer(record(reply=b"<html>")) == (None, None)
    assert answer(record(reply=None, chunks=None)) == (None, None)


@pytest.mark.parametrize(("endpoint", "given", "expected"), [
    ("chat", [{"role": "user", "content": "First"}, {"role": "assistant", "content": "ok"},
              {"role": "user", "content": [{"type": "text", "text": "Second\tone"},
                                           {"type": "image_url", "image_url": {"url": "x"}}]}], "second one"),
    ("chat", [{"role": "system", "content": "only a system prompt"}], None),
    ("completions", "  Once upon\na time", "once upon a time"),
    ("completions", ["first prompt", "second"], "first prompt"),
    ("embeddings", "some text", None),
    ("chat", [{"role": "user", "content": "x" * 600}], "x" * 500),
    ("chat", [{"role": "user", "content": "   "}], None),
])
def test_normalized_prompt(endpoint: str, given: Any, expected: str | None) -> None:
    assert normalized_prompt(endpoint, given) == expected


def test_cache_hit_row_carries_status_bytes_and_the_saved_usage() -> None:
    hit = record(cache_status="hit", cache_hit=True, cache_bytes=321, attempts=0, failures=[])
    row = as_dict(build_row(hit, capture="metadata", client_ip=False))
    assert (row["cache"], row["cache_bytes"], row["cache_hit"]) == ("hit", 321, True)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (12, 3)  # the tokens the hit saved


def test_a_traced_record_keeps_its_trace_id_through_the_wire() -> None:
    """The trace id travels as an int (marshal carries it) and lands as the 32 hex digits the log line prints."""
    import marshal

    from labgate.store.capture import row_from_wire, wire
    from labgate.telemetry.traces import Trace

    traced = record(trace=Trace(0xABC, 7, None, True, None))
    shipped = marshal.loads(marshal.dumps(wire(traced, keep_content=False)))
    row = as_dict(row_from_wire(shipped, capture="metadata", client_ip=False))
    assert row["trace_id"] == "00000000000000000000000000000abc" == traced.as_log()["trace_id"]
    assert as_dict(build_row(record(), capture="metadata", client_ip=False))["trace_id"] is None


def test_the_local_first_decision_is_a_column() -> None:
    row = as_dict(build_row(record(routing="cloud (local over its provider limit)"), capture="metadata",
                            client_ip=False))
    assert row["routing"] == "cloud (local over its provider limit)"
