"""``explain``: pydantic's errors as plain problems (key paths as written, no union tags, one per mistake)."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labgate.config.explain import explain
from labgate.config.problems import Problem


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: int = Field(default=1, ge=1)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["fast", "slow"] = "fast"
    either: int | list[int] = 0
    items: tuple[Inner, ...] = ()
    table: dict[str, Inner] = Field(default_factory=dict)
    ratio: float = Field(default=0.5, gt=0.0, le=1.0)


def problems(data: object) -> list[Problem]:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return explain(info.value, Outer, data, file="f.yaml", prefix="top", lines={"top.items": 3, "top.table": 7})


def test_paths_messages_and_suggestions() -> None:
    assert problems({"mode": "fats", "items": [{"name": "a", "sise": 2}, 5], "table": {"k": {"size": 0}},
                     "ratio": 0, "extra": 1}) == [
        Problem("f.yaml", "top.mode", "expected 'fast' or 'slow'", suggestion="fast"),
        Problem("f.yaml", "top.items[0].sise", "unknown key", suggestion="size", line=3),
        Problem("f.yaml", "top.items[1]", "expected a mapping", line=3),
        Problem("f.yaml", "top.table.k.name", "`name` is required", line=7),
        Problem("f.yaml", "top.table.k.size", "must be at least 1", line=7),
        Problem("f.yaml", "top.ratio", "must be greater than 0"),
        Problem("f.yaml", "top.extra", "unknown key"),
    ]


def test_a_union_mistake_is_one_problem_without_branch_tags() -> None:
    assert problems({"either": "x"}) == [Problem("f.yaml", "top.either", "expected a whole number or a list")]
    # the value is a list: the list branch's problem is the one that helps
    assert problems({"either": ["x"]}) == [Problem("f.yaml", "top.either[0]", "expected a whole number")]
