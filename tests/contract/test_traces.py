"""OpenTelemetry traces: the span tree an OTLP/HTTP receiver gets for a plain request, a
fallback and a stream, and the W3C trace context the upstream receives."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import urllib3

from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator, Status
from labgate.testing.gateway import LoopThread, config_from

otlp_module = pytest.importorskip("labgate.testing.otlp", reason="needs opentelemetry-proto (dev extra)")
pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra: pip install 'labgate[otel]'")
OtlpReceiver = otlp_module.OtlpReceiver
SERVER, CLIENT, INTERNAL, ERROR = 2, 3, 1, 2
CLIENT_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SLOW: list[Simulator] = []  # the simulator behind slow/m (one request at a time: the others queue)


class Lines:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        pass


@pytest.fixture(scope="module", params=["process", "thread"])  # tracing.export: where spans are built
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Any, Simulator, Simulator, str, LoopThread, RunningGateway, Lines]]:
    with contextlib.ExitStack() as stack:
        otlp = stack.enter_context(OtlpReceiver().run_in_thread())
        good = stack.enter_context(Simulator(Behaviour(completion_tokens=5), models=["m"]).run_in_thread())
        bad = stack.enter_context(Simulator(Behaviour(fault=Status(503)), models=["m"]).run_in_thread())
        slow = stack.enter_context(Simulator(Behaviour(latency_s=0.2), models=["m"]).run_in_thread())
        config = config_from(
            {"good": {"type": "openai_compatible", "base_url": good.url + "/v1", "models": ["m"]},
             "bad": {"type": "openai_compatible", "base_url": bad.url + "/v1", "models": ["m"]},
             "anth": {"type": "anthropic", "base_url": good.url, "models": ["m"]},
             "slow": {"type": "openai_compatible", "base_url": slow.url + "/v1", "models": ["m"],
                      "max_parallel_requests": 1}},
            {"routing": {"exact_matches": {"fb": {"provider": "bad", "model": "m",
                                                  "fallback_chain": ["good/m"]}}}},
            {"tracing": {"enabled": True, "endpoint": otlp.url, "export_interval_s": 0.05,
                         "service_name": "labgate-test",
                         "export": request.param},
             "resilience": {"circuit": {"failure_threshold": 1000}}, "cache": {"backend": "memory"},
             "queue": {"timeout_s": 1.0},
             "store": {"url": str(tmp_path_factory.mktemp("history") / "h.db"), "capture": "metadata"}})
        thread = LoopThread()
        stack.callback(thread.close)
        log = Lines()
        running = thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(log)))
        stack.callback(lambda: thread.run(running.stop(grace=2.0)))
        SLOW[:] = [slow]
        yield otlp, good, bad, f"http://127.0.0.1:{running.port}", thread, running, log


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
    return urllib3.request("POST", url + "/v1/chat/completions", body=orjson.dumps(body),
                           headers={"content-type": "application/json", **(headers or {})}, timeout=10)


def tree(otlp: Any, trace_id: str, count: int) -> dict[str, Any]:
    """The trace's spans by name, once all ``count`` have arrived."""
    deadline = time.monotonic() + 10
    while len(spans := [s for s in otlp.wait_for(0) if s.trace_id == trace_id]) < count:
        assert time.monotonic() < deadline, spans
        time.sleep(0.02)
    time.sleep(0.1)  # nothing more arrives for this trace
    spans = [s for s in otlp.wait_for(0) if s.trace_id == trace_id]
    assert len(spans) == count, spans
    return {s.name: s for s in spans}


def test_a_plain_request_makes_a_server_span_with_a_route_and_an_upstream_child(setup: Any) -> None:
    otlp, good, _, url, *_ = setup
    good.clear()
    answer = post(url, {"model": "good/m", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status == 200
    (received,) = good.requests
    traceparent = received.headers["traceparent"]
    version, trace_id, upstream_parent, flags = traceparent.split("-")
    assert (version, flags) == ("00", "01")
    spans = tree(otlp, trace_id, 3)
    assert sorted(spans) == ["chat good/m", "route", "upstream good/m"]
    root, route, attempt = spans["chat good/m"], spans["route"], spans["upstream good/m"]
    assert root.parent_span_id == "" and root.kind == SERVER and root.status == 0
    assert route.parent_span_id == root.span_id and attempt.parent_span_id == root.span_id
    assert attempt.span_id == upstream_parent and attempt.kind == CLIENT  # the upstream's parent is the attempt
    assert root.attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "good/m", "gen_ai.provider.name": "good",
        "gen_ai.usage.input_tokens": root.attributes["gen_ai.usage.input_tokens"],
        "gen_ai.usage.output_tokens": 5, "gen_ai.response.finish_reasons": ["stop"],
        "http.response.status_code": 200, "labgate.request_id": answer.headers["x-request-id"],
        "labgate.endpoint": "chat", "labgate.stream": False, "labgate.outcome": "ok", "labgate.attempts": 1,
        "labgate.cache_hit": False, "labgate.cache": "bypass", "labgate.deployment": "good/m",
        "labgate.ttft_ms": root.attributes["labgate.ttft_ms"]}
    assert root.attributes["gen_ai.usage.input_tokens"] > 0
    assert root.resource["service.name"] == "labgate-test"
    assert root.start_ns <= route.start_ns <= route.end_ns <= attempt.start_ns <= attempt.end_ns <= root.end_ns


def test_a_fallback_shows_the_failed_attempt_with_its_error(setup: Any) -> None:
    otlp, good, bad, url, *_ = setup
    good.clear()
    bad.clear()
    answer = post(url, {"model": "fb", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status == 200 and answer.headers["x-labgate-attempts"] == "2"
    trace_id = good.requests[0].headers["traceparent"].split("-")[1]
    assert bad.requests[0].headers["traceparent"].split("-")[1] == trace_id  # one trace, two attempts
    spans = tree(otlp, trace_id, 4)
    assert sorted(spans) == ["chat fb", "route", "upstream bad/m", "upstream good/m"]
    failed, ok = spans["upstream bad/m"], spans["upstream good/m"]
    assert (failed.status, failed.attributes["error.type"]) == (ERROR, "upstream_server_error")
    assert "503" in failed.status_message
    assert ok.status == 0 and "error.type" not in ok.attributes
    assert failed.end_ns <= ok.start_ns
    assert failed.span_id == bad.requests[0].headers["traceparent"].split("-")[2]
    assert spans["chat fb"].attributes["labgate.attempts"] == 2


def test_a_stream_has_a_stream_span_with_the_first_token_event(setup: Any) -> None:
    otlp, good, _, url, *_ = setup
    good.clear()
    answer = post(url, {"model": "good/m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status == 200 and b"[DONE]" in answer.data
    trace_id = good.requests[0].headers["traceparent"].split("-")[1]
    spans = tree(otlp, trace_id, 4)
    assert sorted(spans) == ["chat good/m", "route", "stream", "upstream good/m"]
    stream, root = spans["stream"], spans["chat good/m"]
    assert stream.parent_span_id == root.span_id and stream.kind == INTERNAL
    ((name, at, attributes),) = stream.events
    assert name == "gen_ai.first_token" and stream.start_ns <= at <= stream.end_ns
    assert attributes["labgate.ttft_ms"] == root.attributes["labgate.ttft_ms"]
    assert root.attributes["labgate.stream"] is True
    assert spans["upstream good/m"].end_ns <= stream.start_ns


def test_the_clients_trace_context_is_continued_and_passed_upstream(setup: Any) -> None:
    otlp, good, _, url, thread, running, log = setup
    good.clear()
    answer = post(url, {"model": "good/m", "messages": [{"role": "user", "content": "hi"}]},
                  {"traceparent": CLIENT_PARENT, "tracestate": "vendor=abc"})
    assert answer.status == 200
    headers = good.requests[0].headers
    _, trace_id, parent, flags = headers["traceparent"].split("-")
    assert (trace_id, flags) == ("0af7651916cd43dd8448eb211c80319c", "01")
    assert headers["tracestate"] == "vendor=abc"
    spans = tree(otlp, trace_id, 3)
    root = spans["chat good/m"]
    assert root.parent_span_id == "b7ad6b7169203331"
    assert root.trace_state == "vendor=abc"
    assert spans["upstream good/m"].span_id == parent
    # the request log line carries the trace id
    thread.run(_flush(running))
    lines = [orjson.loads(line) for line in log.data.splitlines()]
    (line,) = [line for line in lines if line["request_id"] == answer.headers["x-request-id"]]
    assert line["trace_id"] == trace_id


def test_a_client_that_says_not_sampled_is_followed_but_its_context_still_goes_upstream(setup: Any) -> None:
    otlp, good, _, url, *_ = setup
    good.clear()
    otlp.clear()
    unsampled = CLIENT_PARENT[:-2] + "00"
    assert post(url, {"model": "good/m", "messages": [{"role": "user", "content": "hi"}]},
                {"traceparent": unsampled}).status == 200
    _, trace_id, _, flags = good.requests[0].headers["traceparent"].split("-")
    assert (trace_id, flags) == ("0af7651916cd43dd8448eb211c80319c", "00")
    post(url, {"model": "good/m", "messages": [{"role": "user", "content": "marker"}]})  # sampled: exported
    marker = good.requests[1].headers["traceparent"].split("-")[1]
    tree(otlp, marker, 3)
    assert [s for s in otlp.spans if s.trace_id == trace_id] == []


@pytest.mark.parametrize("header", ["garbage", "00-" + "0" * 32 + "-b7ad6b7169203331-01",
                                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
                                    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"])
def test_an_invalid_traceparent_starts_a_new_trace(setup: Any, header: str) -> None:
    _, good, _, url, *_ = setup
    good.clear()
    assert post(url, {"model": "good/m", "messages": [{"role": "user", "content": "hi"}]},
                {"traceparent": header, "tracestate": "x=1"}).status == 200
    headers = good.requests[0].headers
    assert headers["traceparent"].split("-")[1] != "0af7651916cd43dd8448eb211c80319c"
    assert "tracestate" not in headers


def test_a_cache_hit_is_a_trace_without_upstream_spans(setup: Any) -> None:
    otlp, good, _, url, *_ = setup
    body = {"model": "good/m", "temperature": 0, "messages": [{"role": "user", "content": "cache me"}]}
    good.clear()
    assert post(url, body).status == 200  # a miss: stored
    miss_trace = good.requests[0].headers["traceparent"].split("-")[1]
    missed = tree(otlp, miss_trace, 4)
    assert missed["chat good/m"].attributes["labgate.cache"] == "miss"
    lookup, route = missed["cache lookup"], missed["route"]
    assert lookup.parent_span_id == route.span_id and lookup.kind == INTERNAL  # inside routing
    assert lookup.attributes == {"labgate.cache": "miss", "labgate.cache_hit": False}
    assert route.start_ns <= lookup.start_ns <= lookup.end_ns <= route.end_ns <= missed["upstream good/m"].start_ns
    hit = post(url, body, {"traceparent": "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert hit.status == 200 and len(good.requests) == 1  # answered from the cache
    spans = tree(otlp, "1af7651916cd43dd8448eb211c80319c", 3)
    assert sorted(spans) == ["cache lookup", "chat good/m", "route"]
    assert spans["cache lookup"].attributes == {"labgate.cache": "hit", "labgate.cache_hit": True}
    assert spans["cache lookup"].parent_span_id == spans["route"].span_id
    root = spans["chat good/m"]
    assert (root.attributes["labgate.cache"], root.attributes["labgate.cache_hit"]) == ("hit", True)
    assert root.attributes["labgate.attempts"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_the_anthropic_adapter_sends_the_trace_context_too(setup: Any, stream: bool) -> None:
    otlp, good, _, url, *_ = setup
    good.clear()
    answer = post(url, {"model": "anth/m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
                  {"traceparent": f"00-{int(stream) + 2}af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                   "tracestate": "a=b"})
    assert answer.status == 200
    (received,) = good.requests
    assert received.path == "/v1/messages"
    _, trace_id, parent, flags = received.headers["traceparent"].split("-")
    assert (trace_id, flags, received.headers["tracestate"]) == (
        f"{int(stream) + 2}af7651916cd43dd8448eb211c80319c", "01", "a=b")
    spans = tree(otlp, trace_id, 4 if stream else 3)
    assert spans["upstream anth/m"].span_id == parent


def test_a_bypassed_cache_makes_no_lookup_span(setup: Any) -> None:
    otlp, good, _, url, *_ = setup
    good.clear()
    assert post(url, {"model": "good/m", "messages": [{"role": "user", "content": "hi"}]}).status == 200
    spans = tree(otlp, good.requests[0].headers["traceparent"].split("-")[1], 3)  # not deterministic: bypassed
    assert "cache lookup" not in spans and spans["chat good/m"].attributes["labgate.cache"] == "bypass"


def _queued_pair(url: str, second_parent: str) -> tuple[urllib3.BaseHTTPResponse, urllib3.BaseHTTPResponse]:
    """A request holding slow/m's only slot, and one sent while it does (so it queues)."""
    slow = SLOW[0]
    slow.clear()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, {"model": "slow/m", "messages": [{"role": "user", "content": "a"}]})
        deadline = time.monotonic() + 30
        while not slow.requests:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        second = pool.submit(post, url, {"model": "slow/m", "messages": [{"role": "user", "content": "b"}]},
                             {"traceparent": second_parent, "x-labgate-priority": "high"})
        return first.result(), second.result()


def test_a_request_that_waited_for_capacity_has_a_queue_wait_span(setup: Any) -> None:
    otlp, *_ = setup
    trace_id = "7af7651916cd43dd8448eb211c80319c"
    first, second = _queued_pair(setup[3], f"00-{trace_id}-b7ad6b7169203331-01")
    assert first.status == second.status == 200
    spans = tree(otlp, trace_id, 4)
    assert sorted(spans) == ["chat slow/m", "queue wait", "route", "upstream slow/m"]
    root, route, wait, attempt = (spans[n] for n in ("chat slow/m", "route", "queue wait", "upstream slow/m"))
    assert wait.parent_span_id == root.span_id and wait.kind == INTERNAL and wait.status == 0
    assert route.end_ns <= wait.start_ns < wait.end_ns <= attempt.start_ns  # routing, then the wait, then the call
    assert wait.attributes["labgate.priority"] == "high"
    assert 50 < wait.attributes["labgate.queue_ms"] == pytest.approx((wait.end_ns - wait.start_ns) / 1e6, abs=5)


def test_a_queue_timeout_ends_the_wait_span_in_error(setup: Any) -> None:
    otlp, *_ = setup
    SLOW[0].set(Behaviour(latency_s=1.5), model="m")  # longer than queue.timeout_s
    try:
        trace_id = "8af7651916cd43dd8448eb211c80319c"
        first, second = _queued_pair(setup[3], f"00-{trace_id}-b7ad6b7169203331-01")
    finally:
        SLOW[0].set(Behaviour(latency_s=0.2), model="m")
    assert (first.status, second.status) == (200, 503)
    spans = tree(otlp, trace_id, 3)
    assert sorted(spans) == ["chat slow/m", "queue wait", "route"]
    wait = spans["queue wait"]
    assert wait.status == ERROR and "capacity" in wait.status_message and "labgate.queue_ms" not in wait.attributes
    assert 0.9e9 < wait.end_ns - wait.start_ns < 1.4e9


def test_the_history_record_holds_the_trace_id_and_is_found_by_it(setup: Any) -> None:
    """``trace_id`` is a history column (migration 6): shown in /admin/history/<id>, searchable by ``?trace_id=``."""
    _, good, _, url, thread, running, _ = setup
    good.clear()
    parent = "00-5af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced = post(url, {"model": "good/m", "messages": [{"role": "user", "content": "hi"}]}, {"traceparent": parent})
    unsampled = post(url, {"model": "good/m", "messages": [{"role": "user", "content": "hi"}]},
                     {"traceparent": parent.replace("5af7", "6af7")[:-2] + "00"})
    assert traced.status == unsampled.status == 200
    assert running.gateway.history is not None
    thread.run(running.gateway.history.flush())
    for answer, trace_id in ((traced, "5af7651916cd43dd8448eb211c80319c"),
                             (unsampled, "6af7651916cd43dd8448eb211c80319c")):  # continued, so recorded too
        found = orjson.loads(urllib3.request("GET", f"{url}/admin/history?trace_id={trace_id.upper()}").data)
        assert [r["request_id"] for r in found["data"]] == [answer.headers["x-request-id"]]
        assert found["data"][0]["trace_id"] == trace_id
        record = orjson.loads(urllib3.request("GET", f"{url}/admin/history/{answer.headers['x-request-id']}").data)
        assert record["trace_id"] == trace_id


async def _flush(running: RunningGateway) -> None:
    running.gateway.runtime.access_log.flush()
