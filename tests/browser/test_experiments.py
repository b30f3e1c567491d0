"""The Experiments panel of Analytics in Chromium: an experiment from experiments.yaml, its traffic, analysis
and verdict drawn from real history."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

EXPERIMENTS = """
experiments:
  - name: ui-ab
    status: running
    model: m-a
    unit: request
    variants:
      - {name: alpha, model: m-a}
      - {name: beta, model: m-b}
    metrics: [latency_p95, thumbs_up_rate]
"""


def call(lab: Any, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[dict[str, str], Any]:
    req = urllib.request.Request(lab.url + path, data=None if body is None else orjson.dumps(body), method=method,
                                 headers={"authorization": f"Bearer {lab.key}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as answer:
        return dict(answer.headers), orjson.loads(answer.read())


def test_experiment_panel(page: Any, lab: Any, shot: Any, expect: Any) -> None:
    (lab.config_dir / "experiments.yaml").write_text(EXPERIMENTS)
    _, reloaded = call(lab, "POST", "/admin/config/reload")
    assert reloaded["status"] == "applied", reloaded
    try:
        def one(_: int) -> str:
            headers, _ = call(lab, "POST", "/v1/chat/completions", {
                "model": "m-a", "max_tokens": 4, "messages": [{"role": "user", "content": "which variant?"}]})
            return headers["x-labgate-experiment"]

        with ThreadPoolExecutor(8) as pool:
            labels = list(pool.map(one, range(24)))
        assert set(labels) <= {"ui-ab/alpha", "ui-ab/beta"} and len(set(labels)) == 2
        lab.flush()
        page.goto(lab.url + "/ui/#/analytics")
        panel = page.locator("#experiments")
        expect(panel.locator("#x-pick option")).to_have_count(1, timeout=60_000)  # after every chart
        expect(panel.locator("#x-verdict")).to_contain_text("keep running for", timeout=60_000)
        expect(panel.locator("#x-traffic")).to_contain_text(f"alpha: weight 1, {labels.count('ui-ab/alpha')} requests")
        variants = panel.locator("table[aria-label='Variants'] tbody tr")
        expect(variants).to_have_count(2)
        expect(variants.first).to_contain_text("alpha (control)")
        comparisons = panel.locator("table[aria-label='Comparisons'] tbody tr")
        expect(comparisons).to_have_count(2)  # beta vs alpha on latency and thumbs-up rate
        expect(comparisons.first).to_contain_text("latency")
        expect(panel.locator("#x-notes li").first).to_contain_text("too few latency observations")
        shot(page, "experiments")
    finally:
        (lab.config_dir / "experiments.yaml").unlink()
        call(lab, "POST", "/admin/config/reload")
