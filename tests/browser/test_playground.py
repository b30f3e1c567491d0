"""The playground in Chromium: a streamed answer appears token by token, with its timings and the curl."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import orjson


def test_a_streamed_answer_appears_token_by_token(page: Any, lab: Any, shot: Any, expect: Any) -> None:
    page.goto(lab.url + "/ui/#/playground")
    page.select_option("#model", "m-b")
    page.locator("#turns textarea").nth(0).fill("You are terse.")
    page.locator("#turns textarea").nth(1).fill("Say something")
    page.fill("#temperature", "0.3")
    page.fill("#max-tokens", "64")
    page.click("#send")
    # several partial states of the answer are seen before it is complete: it streams, not lands whole
    seen: set[int] = set()
    for _ in range(200):
        chunks = int(page.locator("#answer").get_attribute("data-chunks") or 0)
        seen.add(chunks)
        if page.locator("#ttft").count():
            break
        page.wait_for_timeout(20)
    assert len([n for n in seen if 0 < n < 24]) >= 3, f"answer did not stream: {sorted(seen)}"
    page.wait_for_selector("#ttft")
    assert page.locator("#answer .tok").count() == 24
    ttft = float(page.text_content("#ttft").split()[0])
    assert 30 <= ttft < 5000
    assert page.text_content("#tokens").endswith("24 out")
    assert float(page.text_content("#tps")) > 0
    # the cost comes from the history record's `cost` (the simulator's provider is priced)
    expect(page.locator("#cost")).to_have_text(re.compile(r"^\$[0-9.]+(e-\d+)?$"))
    request_id = page.text_content("#request-id")
    assert request_id.startswith("req_")
    body = lab.sim.requests[-1].body
    assert (body["model"], body["temperature"], body["max_tokens"], body["stream"]) == ("m-b", 0.3, 64, True)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    page.click("summary:has-text('curl')")
    curl = page.text_content("#curl")
    assert "/v1/chat/completions" in curl and '"model": "m-b"' in curl and lab.key not in curl
    shot(page, "playground")


def test_multi_turn_without_streaming_and_a_thumbs_up(page: Any, lab: Any, shot: Any, expect: Any) -> None:
    page.goto(lab.url + "/ui/#/playground")
    page.uncheck("#stream")
    page.locator("#turns textarea").nth(1).fill("first question")
    page.click("#send")
    page.wait_for_selector("#ttft")
    page.click("text=Continue the conversation")
    page.locator("#turns textarea").last.fill("second question")
    page.keyboard.press("Control+Enter")  # the keyboard sends too
    expect(page.locator("#turns .turn")).to_have_count(4)
    expect(page.locator("#ttft")).to_have_count(1)
    expect(page.locator("#send")).to_be_enabled()
    body = lab.sim.requests[-1].body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"] and body["stream"] is False
    request_id = page.text_content("#request-id")
    page.click("[aria-label='Thumbs up']")
    page.wait_for_selector("[aria-label='Thumbs up'][aria-pressed='true']")
    lab.flush()
    req = urllib.request.Request(f"{lab.url}/admin/history/{request_id}",
                                 headers={"authorization": f"Bearer {lab.key}"})
    with urllib.request.urlopen(req) as answer:
        record = orjson.loads(answer.read())
    assert [(v["thumbs"], v["who"]) for v in record["feedback"]] == [(1, "lab-ui")]


def test_the_ui_asks_for_the_key_when_auth_is_on(bare_page: Any, lab: Any) -> None:
    page = bare_page
    page.goto(lab.url + "/ui/#/playground")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", lab.key)
    page.click("#key-save")
    page.wait_for_selector("#model option[value='m-a']", state="attached")
    assert page.evaluate("sessionStorage.getItem('labgate.key')") == lab.key
    assert page.evaluate("localStorage.length") == 0  # never beyond the session


def test_tools_as_json_and_the_streamed_tool_call(page: Any, lab: Any, expect: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    page.goto(lab.url + "/ui/#/playground")
    page.locator("#turns textarea").nth(1).fill("weather in Oslo?")
    page.fill("#tools", orjson.dumps(tools).decode())
    page.click("#send")
    expect(page.locator("#ttft, #stats:has-text('tokens')").first).to_be_visible()
    expect(page.locator("#send")).to_be_enabled()
    assert lab.sim.requests[-1].body["tools"] == tools
    (call,) = orjson.loads(page.text_content("#answer pre"))  # the streamed pieces merged into one call
    assert call["function"]["name"] == "get_weather"
    assert isinstance(orjson.loads(call["function"]["arguments"]), dict)
    page.fill("#tools", "[not json")
    page.click("#send")
    expect(page.locator("#toast")).to_contain_text("tools")
