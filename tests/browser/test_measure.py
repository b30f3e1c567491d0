"""The numbers docs/ui.md quotes, measured in Chromium on each run (saved as measurements.json):
page load, time until the playground is usable, and four streams side by side against one alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from labgate.server.ui import load_static


def test_page_load_and_four_streams_side_by_side(page: Any, lab: Any, expect: Any, artifacts: Path) -> None:
    started = time.perf_counter()
    page.goto(lab.url + "/ui/#/playground")
    expect(page.locator("#model option[value='m-a']")).to_be_attached()
    usable_ms = (time.perf_counter() - started) * 1000
    timing = page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                           " return {dom: n.domContentLoadedEventEnd, load: n.loadEventEnd,"
                           " bytes: performance.getEntriesByType('resource').reduce((a, r) => a + r.transferSize,"
                           " n.transferSize)}; })()")
    page.goto(lab.url + "/ui/#/compare")

    def compare(models: list[str]) -> float:
        for slot in range(4):
            page.select_option(f"#cmp-model-{slot}", models[slot] if slot < len(models) else "")
        page.fill("#cmp-prompt", "race")
        began = time.perf_counter()
        page.click("#cmp-run")
        expect(page.locator(".column .prefer")).to_have_count(len(models))
        return (time.perf_counter() - began) * 1000

    two = compare(["m-a", "m-b"])
    four = compare(["m-a", "m-b", "m-c", "m-a"])
    assert page.locator(".column .tok").count() == 4 * 24
    static_bytes = sum(len(data) for data, _ in load_static().values())
    numbers = {"usable_ms": round(usable_ms), "dom_content_loaded_ms": round(timing["dom"]),
               "load_ms": round(timing["load"]), "transferred_bytes": timing["bytes"], "static_bytes": static_bytes,
               "two_streams_ms": round(two), "four_streams_ms": round(four)}
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "measurements.json").write_bytes(orjson.dumps(numbers, option=orjson.OPT_INDENT_2))
    print(numbers)
    assert usable_ms < 5000, numbers
    # side by side means at once: four streams take about as long as two, not twice as long
    assert four < two * 1.6 + 300, numbers
