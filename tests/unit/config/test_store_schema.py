"""``store:``: validated like every other section, in ``gateway.yaml`` and in ``labgate.yaml``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from labgate.config.load import load_config
from labgate.config.problems import ConfigError
from labgate.config.schema.store import StoreConfig

PROVIDERS = "providers:\n  sim:\n    type: openai_compatible\n    base_url: http://127.0.0.1:9/v1\n    models: [m1]\n"


def test_defaults() -> None:
    assert StoreConfig().model_dump() == {"url": None, "capture": "metadata", "retention_days": None,
                                          "queue_size": 20_000, "batch_size": 500, "flush_interval_s": 0.5,
                                          "client_ip": True, "writer": "process", "writer_cpus": None,
                                          "writer_nice": 0, "send_interval_s": 0.01}


@pytest.mark.parametrize("cpus", [[], [-1], ["a"]])
def test_writer_cpus_must_be_cpu_numbers(cpus: list[object]) -> None:
    with pytest.raises(ValidationError):
        StoreConfig(writer_cpus=cpus)  # type: ignore[arg-type]


def test_writer_is_process_or_thread() -> None:
    assert StoreConfig(writer="thread").writer == "thread"
    with pytest.raises(ValidationError):
        StoreConfig(writer="fork")  # type: ignore[arg-type]


def test_single_file_form_accepts_store(tmp_path: Path) -> None:
    (tmp_path / "labgate.yaml").write_text(PROVIDERS + textwrap.dedent("""\
        store:
          url: postgresql://lab@db/history
          capture: metadata
          retention_days: 30
    """))
    store = load_config(tmp_path).gateway.store
    assert (store.url, store.capture, store.retention_days) == ("postgresql://lab@db/history", "metadata", 30)


@pytest.mark.parametrize(("yaml", "key", "message"), [
    ("store:\n  capture: everything\n", "store.capture", "expected 'full', 'metadata' or 'none'"),
    ("store:\n  url: mysql://x/y\n", "store.url", "unsupported store scheme 'mysql'"),
    ("store:\n  retention_days: 0\n", "store.retention_days", "must be greater than 0"),
    ("store:\n  queue_size: 0\n", "store.queue_size", "must be at least 1"),
    ("store:\n  flush_interval: 1\n", "store.flush_interval", "unknown key"),
])
def test_bad_store_settings_name_the_key(tmp_path: Path, yaml: str, key: str, message: str) -> None:
    (tmp_path / "providers.yaml").write_text(PROVIDERS)
    (tmp_path / "gateway.yaml").write_text(yaml)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    [problem] = info.value.problems
    assert (problem.file, problem.path) == (str(tmp_path / "gateway.yaml"), key)
    assert message in problem.message
    if key == "store.flush_interval":
        assert problem.suggestion == "flush_interval_s"
