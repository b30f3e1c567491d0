"""Variant assignment (routing/experiments.py): weights, stickiness, re-bucketing, targeting, overrides."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from labgate.config.schema.experiments import ExperimentConfig, ExperimentsConfig
from labgate.record import RequestRecord
from labgate.routing.experiments import (
    SAMPLE_LABEL,
    Experiment,
    Experiments,
    Variant,
    override,
    request_tags,
    uniform,
    unit_of,
)

UNITS = 100_000


def experiment(weights: dict[str, float], **extra: Any) -> Experiment:
    return Experiment.of(config(weights, **extra))


def config(weights: dict[str, float], **extra: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "name": "exp", "status": "running",
        "variants": [{"name": n, "model": f"m-{n}", "weight": w} for n, w in weights.items()], **extra})


def assignments(exp: Experiment, n: int = UNITS) -> list[str | None]:
    return [None if (v := exp.choose(f"u:{i}")) is None else v.name for i in range(n)]


def within_binomial(count: int, n: int, p: float) -> bool:
    """Within 4.5 standard deviations: a false alarm about once in 150,000 runs (the data are fixed anyway)."""
    return abs(count - n * p) <= 4.5 * math.sqrt(n * p * (1 - p))


def test_weights_hold_within_binomial_bounds() -> None:
    got = assignments(experiment({"a": 50, "b": 30, "c": 20}))
    assert {v: got.count(v) for v in "abc"} == pytest.approx({"a": 50_000, "b": 30_000, "c": 20_000}, abs=1000)
    for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert within_binomial(got.count(name), UNITS, share), (name, got.count(name))


def test_sample_rate_enrols_a_sticky_share() -> None:
    exp = experiment({"a": 1, "b": 1}, routing_rule={"sample_rate": 0.1})
    got = assignments(exp)
    enrolled = sum(v is not None for v in got)
    assert within_binomial(enrolled, UNITS, 0.1)
    assert assignments(exp, 5000) == got[:5000]  # the same units, the same answer


def test_reweighting_moves_only_the_changed_share() -> None:
    before = assignments(experiment({"a": 50, "b": 50}))
    after = assignments(experiment({"a": 70, "b": 30}))
    moves = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert {m for m in moves} == {("b", "a")}  # nobody leaves a: it only gains
    assert within_binomial(len(moves), UNITS, 0.2)  # exactly the 20 points a gained, up to sampling


def test_reweighting_one_of_three_takes_from_the_others_in_proportion() -> None:
    before = assignments(experiment({"a": 40, "b": 40, "c": 20}))
    after = assignments(experiment({"a": 40, "b": 40, "c": 40}))  # c: 20% → 33.3%
    moves = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert {y for _, y in moves} == {"c"}
    assert within_binomial(len(moves), UNITS, 1 / 3 - 0.2)
    from_a = sum(x == "a" for x, _ in moves)
    assert within_binomial(from_a, len(moves), 0.5)  # a and b had equal shares: they give equally


def test_adding_a_variant_moves_units_only_into_it() -> None:
    before = assignments(experiment({"a": 1, "b": 1}))
    after = assignments(experiment({"a": 1, "b": 1, "c": 1}))
    moves = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert {y for _, y in moves} == {"c"} and within_binomial(len(moves), UNITS, 1 / 3)


def test_a_new_salt_rebuckets() -> None:
    before = assignments(experiment({"a": 1, "b": 1}), 10_000)
    after = assignments(experiment({"a": 1, "b": 1}, salt="round-2"), 10_000)
    changed = sum(x != y for x, y in zip(before, after, strict=True))
    assert within_binomial(changed, 10_000, 0.5)


_CHILD = """
import sys
from labgate.config.schema.experiments import ExperimentConfig
from labgate.routing.experiments import Experiment
exp = Experiment.of(ExperimentConfig.model_validate({"name": "exp", "status": "running", "variants": [
    {"name": "a", "model": "m-a", "weight": 2}, {"name": "b", "model": "m-b", "weight": 1}]}))
print(",".join(exp.choose(f"u:{i}").name for i in range(2000)))
"""


def test_sticky_across_processes() -> None:
    """Two processes with different hash seeds give every unit the same variant (no per-process state)."""
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120,
                              check=True)
        outputs.append(done.stdout.strip())
    here = experiment({"a": 2, "b": 1})
    assert outputs[0] == outputs[1] == ",".join(here.choose(f"u:{i}").name for i in range(2000))  # type: ignore[union-attr]


# --- the request path ---------------------------------------------------------------------------


@dataclass
class Key:
    project: str | None = None
    team: str | None = None


def build(*experiments: dict[str, Any]) -> Experiments:
    found = Experiments.build(ExperimentsConfig.model_validate({"experiments": list(experiments)}))
    assert found is not None
    return found


def record(model: str = "chat", headers: dict[str, str] | None = None, key_id: str | None = None) -> RequestRecord:
    r = RequestRecord("req_1", "chat")
    r.model, r.headers, r.key_id = model, headers or {}, key_id
    return r


BASIC = {"name": "exp", "status": "running", "model": "chat", "unit": "header:x-session-id",
         "variants": [{"name": "a", "model": "m-a"}, {"name": "b", "model": "m-b"}]}
PAYLOAD = {"model": "chat", "messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}]}


def test_assign_routes_to_the_variant_and_names_it() -> None:
    exps = build(BASIC)
    seen = set()
    for i in range(40):
        r = record(headers={"x-session-id": f"s{i}"})
        body, native = exps.assign(r, PAYLOAD, {"native": True}, None)
        assert body is PAYLOAD and native == {"native": True}  # no overrides: nothing copied
        assert (r.experiment, r.model) in {("exp", "m-a"), ("exp", "m-b")} and r.model == f"m-{r.variant}"
        seen.add(r.variant)
        again = record(headers={"x-session-id": f"s{i}"})
        exps.assign(again, PAYLOAD, None, None)
        assert again.variant == r.variant  # sticky
    assert seen == {"a", "b"}


def test_not_enrolled() -> None:
    exps = build({**BASIC, "routing_rule": {"match": {"tags": ["code", "project:lab"]}}},
                 {**BASIC, "name": "later", "model": "other", "start_date": "2999-01-01"})
    cases = [
        record(model="unrelated"),
        record(headers={"x-labgate-experiment": "off", "x-labgate-tags": "code", "x-session-id": "s"}),
        record(headers={"x-labgate-tags": "code", "x-session-id": "s"}),  # no project:lab
        record(model="other"),  # not started yet
    ]
    for r in cases:
        model = r.model
        assert exps.assign(r, PAYLOAD, None, None) == (PAYLOAD, None)
        assert (r.experiment, r.variant, r.model) == (None, None, model)
    tagged = record(headers={"x-labgate-tags": " code , x", "x-session-id": "s"})
    exps.assign(tagged, PAYLOAD, None, Key(project="lab"))  # the key's project is a tag
    assert tagged.experiment == "exp"


def test_ended_experiments_cost_nothing() -> None:
    ended = {**BASIC, "start_date": "2020-01-01", "end_date": "2020-02-01"}
    assert Experiments.build(ExperimentsConfig.model_validate({"experiments": [ended]})) is None
    paused = {**BASIC, "status": "paused"}
    assert Experiments.build(ExperimentsConfig.model_validate({"experiments": [paused]})) is None


def test_units() -> None:
    exps = build({**BASIC, "unit": "user"})
    by_user = [record(key_id="key-1") for _ in range(2)]
    for r in by_user:
        exps.assign(r, {**PAYLOAD, "user": "alice"}, None, None)
    assert by_user[0].variant == by_user[1].variant
    # the same user through the header and through Anthropic's metadata.user_id: one unit
    variants = set()
    for payload, headers in (({**PAYLOAD, "user": "u7"}, {}), (PAYLOAD, {"x-labgate-user": "u7"}),
                             ({**PAYLOAD, "metadata": {"user_id": "u7"}}, {})):
        r = record(headers=headers)
        exps.assign(r, payload, None, None)
        variants.add(r.variant)
    assert len(variants) == 1
    keyed = build({**BASIC, "unit": "key"})
    got = set()
    for i in range(30):  # without a user the key decides; every request of one key gets one variant
        r = RequestRecord(f"req_{i}", "chat")
        r.model, r.key_id, r.headers = "chat", "key-7", {}
        keyed.assign(r, PAYLOAD, None, None)
        got.add(r.variant)
    assert len(got) == 1


def test_overrides_copy_the_body() -> None:
    exps = build({**BASIC, "variants": [
        {"name": "a", "weight": 1, "parameters": {"temperature": 0.2}, "system_prompt": "be brief"},
        {"name": "b", "weight": 0}]})
    r = record(headers={"x-session-id": "s"})
    body, native = exps.assign(r, PAYLOAD, {"native": True}, None)
    assert r.variant == "a" and r.model == "chat"  # no model of its own: the requested one
    assert body == {"model": "chat", "temperature": 0.2, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    assert native is None and r.payload is body  # the adapter translates the changed body
    assert PAYLOAD["messages"][0]["content"] == "old"  # the client's body is untouched


# --- the pieces, one at a time -------------------------------------------------------------------


def test_a_units_draw_is_pinned_so_an_upgrade_does_not_rebucket_a_running_experiment() -> None:
    # values of this release's hash and mixer: a change to either moves every unit of every running experiment
    assert uniform(b"salt", "exp/a", "u:alice") == 0.8810376450319163
    assert uniform(b"", SAMPLE_LABEL, "k:key-1") == 0.10302320852217182


def test_unit_of_names_the_kind_of_unit_it_hashes() -> None:
    user, header, key, per_request = (experiment({"a": 1, "b": 1}, unit=u)
                                      for u in ("user", "header:x-s", "key", "request"))
    assert (user.unit, user.header, header.unit, header.header) == ("user", None, "header", "x-s")
    with_key = record(key_id="key-1")
    assert unit_of(user, with_key, {"user": "alice"}, {}) == "u:alice"
    assert unit_of(user, with_key, {"user": 123}, {}) == "k:key-1"  # not a string: not a user
    assert unit_of(user, record(), {"user": "x" * 300}, {}) == "u:" + "x" * 256
    assert unit_of(header, with_key, {}, {"x-s": "s1"}) == "h:s1"
    assert unit_of(key, with_key, {"user": "alice"}, {}) == "k:key-1"
    assert unit_of(user, record(), {}, {}) == "req_1"  # no user, no key: the request
    assert unit_of(per_request, with_key, {"user": "alice"}, {}) == "req_1"


def test_request_tags_are_the_header_s_comma_separated_names_and_the_key_s() -> None:
    assert request_tags({}, None) == frozenset()
    assert request_tags({"x-labgate-tags": " a b, c ,,d"}, Key(project="lab", team="ml")) == {
        "a b", "c", "d", "project:lab", "team:ml"}
    many = ",".join(f"t{i}" for i in range(40))
    assert request_tags({"x-labgate-tags": many}, None) == {f"t{i}" for i in range(32)}  # the first 32


def test_a_system_prompt_replaces_the_system_and_developer_messages() -> None:
    variant = experiment({"a": 1, "b": 1}).variants[0]
    prompted = Variant(variant.name, variant.label, None, 1.0, {}, "be brief", variant.code)
    body = override({"messages": [{"role": "developer", "content": "d"}, {"role": "system", "content": "s"},
                                  {"role": "user", "content": "hi"}]}, prompted)
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def test_reweight_serves_the_given_weights_then_the_configured_ones_again() -> None:
    exp = experiment({"a": 1, "b": 1})
    exp.reweight({"b": 2})  # a is missing: weight 0
    assert (exp.weights, set(assignments(exp, 200))) == ({"b": 2}, {"b"})
    exp.reweight(None)
    assert (exp.weights, set(assignments(exp, 200))) == (None, {"a", "b"})


def test_active_from_start_until_before_end() -> None:
    exp = experiment({"a": 1, "b": 1}, start_date="2030-01-01", end_date="2030-02-01")
    assert exp.start is not None and exp.end is not None
    assert [exp.active(t) for t in (exp.start - 1, exp.start, exp.end - 1, exp.end)] == [False, True, True, False]
    assert experiment({"a": 1, "b": 1}).active(0.0)


def test_a_wildcard_experiment_takes_any_model_after_the_named_ones() -> None:
    exps = build({**BASIC, "name": "named", "model": "chat"}, {**BASIC, "name": "any", "model": "*"})
    assert [e.name for e in exps.experiments] == ["named", "any"]
    for model, name in (("chat", "named"), ("other", "any")):
        r = record(model=model, headers={"x-session-id": "s"})
        exps.assign(r, PAYLOAD, None, None)
        assert r.experiment == name


def test_opting_out_is_the_header_off_in_any_case() -> None:
    exps = build(BASIC)
    for value, enrolled in ((" OFF ", None), ("off", None), ("on", "exp")):
        r = record(headers={"x-labgate-experiment": value, "x-session-id": "s"})
        exps.assign(r, PAYLOAD, None, None)
        assert r.experiment == enrolled


def test_the_next_experiment_is_tried_when_one_is_outside_its_window_tags_or_sample() -> None:
    later = {**BASIC, "name": "later", "start_date": "2999-01-01"}
    tagged = {**BASIC, "name": "tagged", "routing_rule": {"match": {"tags": ["code"]}}}
    sampled = {**BASIC, "name": "sampled", "routing_rule": {"sample_rate": 0.0}}
    exps = build(later, tagged, sampled, {**BASIC, "name": "last"})
    r = record(headers={"x-session-id": "s"})
    exps.assign(r, PAYLOAD, None, None)
    assert r.experiment == "last"
    exact = record(headers={"x-session-id": "s", "x-labgate-tags": "code"})  # tags equal to the rule's: enrolled
    exps.assign(exact, PAYLOAD, None, None)
    assert exact.experiment == "tagged"


def test_an_experiment_runs_from_its_start_instant_until_before_its_end() -> None:
    exps = build({**BASIC, "start_date": "2030-01-01", "end_date": "2999-01-01"})
    start, end = exps.experiments[0].start, exps.experiments[0].end
    assert start is not None and end is not None
    for now, enrolled in ((start - 0.001, None), (start, "exp"), (end, None)):
        r = record(headers={"x-session-id": "s"})
        r.timestamp = now
        exps.assign(r, PAYLOAD, None, None)
        assert r.experiment == enrolled
