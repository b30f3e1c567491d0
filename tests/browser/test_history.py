"""History in Chromium: search with filters, open a record, replay it on another model, export the set."""

from __future__ import annotations

import csv
import io
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson


def chat(lab: Any, model: str, text: str) -> str:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16})
    req = urllib.request.Request(lab.url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"authorization": f"Bearer {lab.key}", "content-type": "application/json"})
    with urllib.request.urlopen(req) as answer:
        answer.read()
        return answer.headers["x-request-id"]


def test_search_open_replay_and_export(page: Any, lab: Any, shot: Any, expect: Any) -> None:
    marker = f"zebra-{uuid.uuid4().hex[:8]}"
    ids = [chat(lab, "m-a", f"{marker} one"), chat(lab, "m-c", f"{marker} two"), chat(lab, "m-a", "unrelated")]
    lab.flush()
    page.goto(lab.url + "/ui/#/history")
    expect(page.locator("#results tbody tr").first).to_be_visible()
    page.fill("#f-text", marker)
    page.fill("#f-model", "m-a")
    page.click("#search")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-request-id") == ids[0]
    page.fill("#f-model", "")
    page.click("#search")
    expect(rows).to_have_count(2)
    assert [rows.nth(n).get_attribute("data-request-id") for n in range(2)] == [ids[1], ids[0]]  # newest first
    # export the filtered set (both formats) as files
    with page.expect_download() as csv_download:
        page.click("#export-csv")
    exported = list(csv.DictReader(io.StringIO(Path(csv_download.value.path()).read_text(encoding="utf-8"))))
    assert [r["request_id"] for r in exported] == [ids[0], ids[1]]  # export is oldest first
    with page.expect_download() as json_download:
        page.click("#export-json")
    assert [r["request_id"] for r in orjson.loads(Path(json_download.value.path()).read_bytes())] == ids[:2]
    # open a record: its request, answer, timings and feedback
    page.click(f"[aria-label='Open {ids[0]}']")
    expect(page.locator("#detail")).to_be_visible()
    assert f"{marker} one" in page.text_content("#rec-messages")
    assert page.text_content("#rec-response").strip() != "–"
    assert page.text_content("#rec-feedback") == "No feedback."
    shot(page, "history")
    # replay on another model: the playground opens with the same messages and runs
    page.select_option("#replay-model", "m-b")
    before = len(lab.sim.requests)
    page.click("#replay")
    expect(page.locator("#ttft")).to_have_count(1, timeout=10_000)
    replayed = [r.body for r in lab.sim.requests[before:]]
    assert [(b["model"], b["messages"]) for b in replayed] == [
        ("m-b", [{"role": "user", "content": f"{marker} one"}])]
    assert replayed[0]["max_tokens"] == 16


def test_metadata_capture_is_explained(page: Any, lab: Any, expect: Any) -> None:
    from labgate.server.serve import start_gateway
    from labgate.telemetry.logs import AccessLog
    from labgate.testing.gateway import config_from

    config = config_from(
        {"sim": {"type": "openai_compatible", "base_url": lab.sim.url + "/v1", "models": ["m-a"]}},
        gateway={"auth": {"master_key_env": "LABGATE_UI_TEST_MASTER_KEY"}, "logging": {"requests": False},
                 "store": {"url": str(lab.config_dir / "metadata.db"), "capture": "metadata"}})
    gateway = lab.thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False)))
    try:
        page.goto(gateway.url + "/ui/#/history")
        expect(page.locator("#capture-note")).to_contain_text('capture is "metadata"')
        assert page.is_disabled("#f-text")
    finally:
        lab.thread.run(gateway.stop(grace=1.0))
