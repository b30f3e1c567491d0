"""Where a queued request's priority comes from: header, key tags, route, default."""

from __future__ import annotations

import pytest

from labgate.config.schema.queue import QueueConfig
from labgate.errors import RequestError
from labgate.keys import VirtualKey
from labgate.record import RequestRecord
from labgate.routing.queue import PRIORITIES, Queue

QUEUE = Queue.of(QueueConfig.model_validate({
    "routes": {"batch-model": "low"}, "projects": {"oncall": "critical", "nightly": "low"},
    "teams": {"research": "high"}}))


def asked(*, header: str | None = None, project: str | None = None, team: str | None = None,
          model: str = "m") -> str:
    record = RequestRecord("r", "chat", model=model, priority=header)
    if project or team:
        record.api_key = VirtualKey("k", "key", "abcd", project=project, team=team)
    return next(name for name, rank in PRIORITIES.items() if rank == QUEUE.priority(record))


def test_header_route_and_default() -> None:
    assert asked() == "normal"
    assert asked(model="batch-model") == "low"
    assert asked(header=" HIGH ", model="batch-model") == "high"


def test_a_keys_project_then_its_team_give_its_priority_over_the_route() -> None:
    assert asked(project="oncall", model="batch-model") == "critical"
    assert asked(project="unlisted", team="research") == "high"
    assert asked(project="nightly", team="research") == "low"  # the project is asked first
    assert asked(project="unlisted", team="unlisted", model="batch-model") == "low"  # untagged: as before


def test_the_header_may_lower_a_tagged_keys_priority_but_never_raise_it() -> None:
    assert asked(header="critical", project="nightly") == "low"
    assert asked(header="low", project="oncall") == "low"
    assert asked(header="critical", team="research") == "high"


def test_an_unknown_header_is_refused_even_for_a_tagged_key() -> None:
    with pytest.raises(RequestError, match="x-labgate-priority"):
        asked(header="urgent!!", project="oncall")
