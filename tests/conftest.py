"""Suite-wide rules.

Tests skip with a reason where a real engine, service, tool or extra is absent
— except when ``LABGATE_REQUIRE_INTEGRATION`` is set (``.ci/run`` sets it):
then every skip is a failure, whether it comes from a test (``pytest.skip``,
``skipif``, a fixture), or from a whole module (a module-level
``pytest.importorskip``). An ``xfail`` is not a skip and stays as it is.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Generator
from typing import Any

import pytest

# Gateways started by tests (in process or as `labgate serve`) keep their request history
# (the default SQLite store) here, never in the user's data directory.
os.environ.setdefault("LABGATE_DATA_DIR", tempfile.mkdtemp(prefix="labgate-test-data-"))

# The whole-gateway fuzz (tests/contract/test_scenarios.py) draws from a fresh seed on every run, printed
# at the end of the run; LABGATE_FUZZ_SEED=N replays one.
os.environ.setdefault("LABGATE_FUZZ_SEED", str(secrets.randbits(32)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    seed = os.environ["LABGATE_FUZZ_SEED"]
    terminalreporter.write_line(f"fuzz seed: {seed} (replay with LABGATE_FUZZ_SEED={seed})")


REQUIRED = "skipped, but CI requires every test to run (LABGATE_REQUIRE_INTEGRATION)"


def _required() -> bool:
    return bool(os.environ.get("LABGATE_REQUIRE_INTEGRATION"))


def _reason(longrepr: Any) -> str:
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _required():
        report.outcome = "failed"
        report.longrepr = f"{REQUIRED}: {_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _required():  # e.g. a module-level importorskip: the whole file would vanish
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} {REQUIRED}: {_reason(report.longrepr)}"
