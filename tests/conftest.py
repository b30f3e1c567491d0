"""Suite-wide rules.

Integration tests (marker ``integration``) skip with a reason where a real
engine or service is absent — except when ``LABGATE_REQUIRE_INTEGRATION`` is
set (``.ci/run`` sets it): then such a skip is a failure.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from typing import Any

import pytest

# Gateways started by tests (in process or as `labgate serve`) keep their request history
# (the default SQLite store) here, never in the user's data directory.
os.environ.setdefault("LABGATE_DATA_DIR", tempfile.mkdtemp(prefix="labgate-test-data-"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("LABGATE_REQUIRE_INTEGRATION")
            and item.get_closest_marker("integration") is not None):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"integration test skipped, but CI requires it to run: {reason}"
