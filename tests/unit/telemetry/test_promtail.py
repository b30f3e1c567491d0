"""deploy/promtail: the example reads fields the request log really has, and labels only bounded ones."""

from __future__ import annotations

from pathlib import Path

import yaml

from labgate.record import RequestRecord

PROMTAIL = Path(__file__).resolve().parents[3] / "deploy" / "promtail" / "promtail.yml"


def test_the_request_job_extracts_fields_of_the_log_line_and_bounded_labels() -> None:
    config = yaml.safe_load(PROMTAIL.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    stages = jobs["labgate-requests"]["pipeline_stages"]
    (extract,) = [s["json"]["expressions"] for s in stages if "json" in s]
    fields = set(RequestRecord("r", "chat").as_log())
    assert set(extract.values()) <= fields
    (labels,) = [s["labels"] for s in stages if "labels" in s]
    # never a label per request or per client-chosen name: ids, models and keys stay in the line
    assert set(labels) == {"status_class", "outcome", "endpoint", "provider", "is_stream"}
    assert not set(labels) & {"request_id", "trace_id", "model", "key_id", "client_ip"}
    assert [s["timestamp"]["source"] for s in stages if "timestamp" in s] == ["ts"]
