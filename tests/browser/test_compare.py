"""Compare in Chromium: three models streamed side by side, a blind vote lands in /v1/feedback and the record."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import orjson


def admin(lab: Any, path: str) -> Any:
    req = urllib.request.Request(lab.url + path, headers={"authorization": f"Bearer {lab.key}"})
    with urllib.request.urlopen(req) as answer:
        return orjson.loads(answer.read())


def test_three_models_side_by_side_with_a_blind_vote(page: Any, lab: Any, shot: Any, expect: Any) -> None:
    page.goto(lab.url + "/ui/#/compare")
    for slot, model in enumerate(("m-a", "m-b", "m-c")):
        page.select_option(f"#cmp-model-{slot}", model)
    page.check("#blind")
    page.fill("#cmp-prompt", "Which is best?")
    page.click("#cmp-run")
    columns = page.locator(".column")
    expect(columns).to_have_count(3)
    # blind: the columns are labelled A, B, C, never by model
    titles = [t.strip() for t in page.locator(".col-title").all_text_contents()]
    assert titles == ["Model A", "Model B", "Model C"]
    for n in range(3):
        expect(columns.nth(n).locator(".prefer")).to_be_visible()
    assert all(t.count() == 24 for t in (columns.nth(n).locator(".tok") for n in range(3)))
    for n in range(3):
        assert columns.nth(n).locator(".ttft").text_content().endswith("ms")
        assert columns.nth(n).locator(".tokens").text_content().endswith("/ 24")
    # the three ran at once: their requests overlapped at the simulator
    bodies = [r.body for r in lab.sim.requests[-3:]]
    assert sorted(b["model"] for b in bodies) == ["m-a", "m-b", "m-c"]
    shot(page, "compare-blind")
    comparison = page.get_attribute("#cmp-summary", "data-comparison-id")
    chosen = columns.nth(1)
    chosen_request = chosen.get_attribute("data-request-id")
    chosen.locator("[aria-label^='Thumbs up']").click()
    expect(chosen.locator("[aria-label^='Thumbs up']")).to_have_attribute("aria-pressed", "true")
    chosen.locator(".prefer").click()
    # the vote reveals the names
    expect(chosen).to_have_attribute("data-model", re.compile(r"^m-[abc]$"))
    model = chosen.get_attribute("data-model")
    revealed = [t.strip() for t in page.locator(".col-title").all_text_contents()]
    assert sorted(t.split(" ")[0] for t in revealed) == ["m-a", "m-b", "m-c"]
    assert all("(was Model" in t for t in revealed)
    shot(page, "compare-revealed")
    lab.flush()
    record = admin(lab, f"/admin/history/{chosen_request}")
    assert record["model"] == model
    votes = [(v["thumbs"], v["preferred"], v["comparison_id"]) for v in record["feedback"]]
    assert votes == [(1, None, comparison), (None, True, comparison)]
    per_model = {r["model"]: r for r in admin(lab, "/admin/analytics/feedback")}
    assert per_model[model]["preferred"] >= 1
