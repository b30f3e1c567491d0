"""Connection caps and the rate-limited warnings of server/limits.py."""

from __future__ import annotations

import logging

import pytest

from labgate.server import limits
from labgate.server.limits import Admission, LimitLog, ServerLimits


def test_admission_caps_in_all_and_per_address_and_releases() -> None:
    admission = Admission(ServerLimits(max_connections=3, max_connections_per_ip=2), LimitLog())
    assert [admission.admit("a"), admission.admit("a")] == [None, None]
    assert admission.admit("a") == ("Too many open connections from your address "
                                    "(server.max_connections_per_ip = 2); retry later.")
    assert admission.admit("b") is None
    assert admission.admit("c") == ("The gateway has too many open connections (server.max_connections = 3); "
                                    "retry later.")
    assert admission.open == 3
    admission.release("a")
    assert (admission.open, admission.admit("c"), admission.open) == (2, None, 3)
    for client in ("a", "b", "c"):
        admission.release(client)
    assert (admission.open, admission._by_ip) == (0, {})  # no entry left behind per address


def test_limit_log_says_once_per_interval_and_counts_the_rest(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    log = LimitLog()
    with caplog.at_level(logging.WARNING, logger="labgate.server"):
        for _ in range(5):
            log.warn("max_connections", "refused %s", "x")
        log.warn("other", "other %d", 1)
        now[0] += limits.LOG_EVERY_S
        log.warn("max_connections", "refused %s", "y")
    assert [r.getMessage() for r in caplog.records] == [
        "refused x", "other 1", "refused y (and 4 more since the last such warning)"]


def test_start_warns_when_max_connections_needs_more_descriptors_than_allowed(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    resource = pytest.importorskip("resource")
    from labgate.server import http

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    with caplog.at_level(logging.WARNING, logger="labgate.server"):
        http._warn_if_fds_short(512)  # two descriptors each: fits exactly
        http._warn_if_fds_short(513)  # one connection too many
        http._warn_if_fds_short(4096)
    assert [r.getMessage() for r in caplog.records] == [
        "server.max_connections is 513 but the file descriptor limit (ulimit -n) is 1024: "
        "raise the limit or lower max_connections to about 512",
        "server.max_connections is 4096 but the file descriptor limit (ulimit -n) is 1024: "
        "raise the limit or lower max_connections to about 512"]
