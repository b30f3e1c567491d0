"""Analytics in Chromium: every chart drawn from real history, non-empty; range and grouping redraw."""

from __future__ import annotations

import urllib.request
from typing import Any

import orjson


def call(lab: Any, path: str, body: dict[str, Any]) -> str:
    req = urllib.request.Request(lab.url + path, data=orjson.dumps(body), method="POST",
                                 headers={"authorization": f"Bearer {lab.key}", "content-type": "application/json"})
    with urllib.request.urlopen(req) as answer:
        answer.read()
        return answer.headers["x-request-id"]


def test_charts_are_drawn_and_non_empty(page: Any, lab: Any, shot: Any, expect: Any) -> None:
    for model, stream in (("m-a", True), ("m-b", True), ("m-c", False)):
        rid = call(lab, "/v1/chat/completions", {"model": model, "stream": stream, "max_tokens": 8,
                                                 "messages": [{"role": "user", "content": "chart me"}]})
        lab.flush()
        call(lab, "/v1/feedback", {"request_id": rid, "score": 4, "thumbs": "up"})
    page.goto(lab.url + "/ui/#/analytics")
    expect(page.locator("#summary")).to_be_visible()
    assert int(page.text_content("#sum-requests")) >= 3
    cards = page.locator(".chart-card")
    expect(cards).to_have_count(9)
    for title in ("Requests over time", "Latency p50 / p95 over time", "Time to first token (streams)",
                  "Tokens by model", "Feedback by model"):
        card = page.locator(f".chart-card[aria-label='{title}']")
        assert card.locator("svg.chart").count() == 1, title
        marks = card.locator("svg.chart rect.bar, svg.chart circle.point").count()
        assert marks > 0, f"{title}: no bars or points"
    assert page.locator("#top-prompts li").filter(has_text="chart me").count() == 1
    shot(page, "analytics")
    page.select_option("#a-by", "provider")
    expect(page.locator(".chart-card[aria-label='Tokens by provider'] rect.bar").first).to_be_attached()
    page.select_option("#a-range", "1h")
    expect(page.locator(".chart-card[aria-label='Requests over time'] circle.point").first).to_be_attached()
