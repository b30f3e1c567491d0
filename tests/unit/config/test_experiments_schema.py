"""``experiments.yaml``: validated like every file ("did you mean"), checked across files, hot-reloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from labgate.config.load import load_config
from labgate.config.problems import ConfigError
from labgate.config.reload import ConfigSource, Reloader, load_files
from labgate.runtime import Runtime

PROVIDERS = """
providers:
  local:
    type: openai_compatible
    base_url: http://127.0.0.1:9/v1
    models: [fast, slow]
"""
GOOD = """
experiments:
  - name: speed
    status: active            # the seeds' word for running
    start_date: 2025-10-21
    end_date: "2999-11-21"
    model: chat
    unit: header:x-session-id
    variants:
      - {name: fast, model: fast, weight: 50}
      - {name: slow, model: local/slow, weight: 50, parameters: {temperature: 0.2}}
    routing_rule: {match: {tags: [code-generation]}, sample_rate: 0.5}
    metrics: [latency_p95, tokens_per_second, user_satisfaction, cost_per_request]
"""


def write(directory: Path, experiments: str) -> Path:
    (directory / "providers.yaml").write_text(PROVIDERS)
    (directory / "model-mappings.yaml").write_text("routing:\n  aliases: {chat: fast}\n")
    (directory / "gateway.yaml").write_text("logging: {requests: false}\n")
    (directory / "experiments.yaml").write_text(experiments)
    return directory


def problems(directory: Path) -> list[tuple[str, str, str | None]]:
    with pytest.raises(ConfigError) as caught:
        load_config(directory)
    return [(p.path, p.message, p.suggestion) for p in caught.value.problems]


def test_the_seeds_form_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    (exp,) = config.experiments.experiments
    assert (exp.status, exp.covers, exp.unit, exp.primary, exp.control_name) == (
        "running", ("chat",), "header:x-session-id", "latency_p95", "fast")
    assert exp.variants[1].parameters == {"temperature": 0.2}
    start, end = exp.window()
    assert start == 1761004800.0 and end == 32500224000.0  # 2025-10-21T00:00Z; the end day included
    runtime = Runtime.build(config)
    assert runtime.experiments is not None and runtime.experiments.by_model.keys() == {"chat"}


def test_mistakes_are_named_with_suggestions(tmp_path: Path) -> None:
    bad = GOOD.replace("status: active", "status: runing").replace("parameters:", "paramters:")
    found = problems(write(tmp_path, bad))
    assert ("experiments[0].status", "expected 'draft', 'running', 'paused' or 'stopped'", "running") in found
    assert ("experiments[0].variants[1].paramters", "unknown key", "parameters") in found


def test_targets_must_resolve(tmp_path: Path) -> None:
    found = problems(write(tmp_path, GOOD.replace("model: fast, weight", "model: fats, weight")))
    assert found == [("experiments[0].variants[0].model", "'fats' is not a known model or provider/model pair",
                      "fast")]


@pytest.mark.parametrize(("change", "message"), [
    ("unit: header:x-session-id", "the unit of assignment is one of user, key, request or header:<name>"),
    ("metrics: [latency_p95, ", "unknown metric 'latency_p99'"),
    ("start_date: 2025-10-21", "end_date must come after start_date"),
    ("sample_rate: 0.5", "must be at most 1"),
])
def test_bad_values(tmp_path: Path, change: str, message: str) -> None:
    replacement = {"unit: header:x-session-id": "unit: cookie",
                   "metrics: [latency_p95, ": "metrics: [latency_p99, ",
                   "start_date: 2025-10-21": "start_date: 3000-01-01",
                   "sample_rate: 0.5": "sample_rate: 1.5"}[change]
    found = problems(write(tmp_path, GOOD.replace(change, replacement)))
    assert len(found) == 1 and message in found[0][1], found


def test_duplicate_names_and_unknown_control(tmp_path: Path) -> None:
    twice = GOOD + GOOD.split("experiments:\n", 1)[1]
    assert "experiment names must be unique" in problems(write(tmp_path, twice))[0][1]
    control = GOOD.replace("    model: chat\n", "    model: chat\n    control: medium\n")
    assert "control 'medium' is not a variant" in problems(write(tmp_path, control))[0][1]


@pytest.mark.asyncio
async def test_hot_reload_starts_and_stops_an_experiment(tmp_path: Path) -> None:
    loaded = load_files(write(tmp_path, GOOD.replace("status: active", "status: draft")))

    class FakeGateway:
        def __init__(self, runtime: Runtime) -> None:
            self.runtime, self.history, self.metrics, self.traces, self.draining = runtime, None, None, None, False

    gateway = FakeGateway(Runtime.build(loaded.config))
    assert gateway.runtime.experiments is None  # a draft costs nothing
    reloader = Reloader(gateway, loaded, source=ConfigSource(path=tmp_path))  # type: ignore[arg-type]
    write(tmp_path, GOOD)
    result = await reloader.reload(trigger="test")
    assert result.status == "applied"
    assert [str(c) for c in result.changes] == ["~ experiment speed: status draft → running"]
    assert gateway.runtime.experiments is not None
    write(tmp_path, GOOD.replace("model: fast, weight", "model: fats, weight"))
    result = await reloader.reload(trigger="test")
    assert result.status == "refused" and gateway.runtime.experiments is not None  # the running one stays
    await reloader.aclose()
    await gateway.runtime.aclose()
