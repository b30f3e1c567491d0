"""deploy/locust/locustfile.py works against labgate: a short headless Locust run, no failures."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from labgate.server.serve import start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import LoopThread, config_from

pytestmark = pytest.mark.integration
LOCUSTFILE = Path(__file__).resolve().parents[2] / "deploy" / "locust" / "locustfile.py"


class Sink:
    def write(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass


@pytest.fixture(scope="module")
def locust() -> str:
    found = os.environ.get("LABGATE_LOCUST") or shutil.which("locust")
    if not found:
        pytest.skip("locust not found: pip install locust (in its own virtualenv) and put it on PATH, "
                    "or set LABGATE_LOCUST to its executable")
    return found


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with Simulator(Behaviour(completion_tokens=5), models=["m1", "m2", "e1"]).run_in_thread() as sim:
        config = config_from({"sim": {"type": "openai_compatible", "base_url": sim.url + "/v1",
                                      "models": ["m1", "m2", "e1"]}})
        thread = LoopThread()
        running = thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(Sink())))
        try:
            yield f"http://127.0.0.1:{running.port}"
        finally:
            thread.run(running.stop(grace=1.0))
            thread.close()


def test_a_short_headless_run_has_chat_streams_embeddings_and_no_failures(locust: str, url: str,
                                                                           tmp_path: Path) -> None:
    env = {**os.environ, "LABGATE_MODELS": "m1,m2", "LABGATE_EMBED_MODEL": "e1"}
    result = subprocess.run([locust, "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4", "-t", "4s",
                             "--host", url, "--only-summary", "--csv", str(tmp_path / "run"),
                             "--exit-code-on-error", "1"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    with (tmp_path / "run_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"chat", "chat stream", "embeddings", "first-token", "Aggregated"}
    for name in ("chat", "chat stream", "embeddings", "first-token"):
        assert int(rows[name]["Request Count"]) > 0, name
    assert int(rows["Aggregated"]["Failure Count"]) == 0
