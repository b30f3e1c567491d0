"""Operations in Chromium: providers' health, the masked config, validate (the diff first) then reload."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import orjson


def models(lab: Any) -> list[str]:
    req = urllib.request.Request(lab.url + "/v1/models", headers={"authorization": f"Bearer {lab.key}"})
    with urllib.request.urlopen(req) as answer:
        return [m["id"] for m in orjson.loads(answer.read())["data"]]


def test_validate_shows_the_diff_then_reload_applies_it(page: Any, lab: Any, shot: Any, expect: Any) -> None:
    page.goto(lab.url + "/ui/#/operations")
    expect(page.locator("#providers tr[data-provider='sim'] td").nth(2)).to_have_text("reachable")
    page.click("summary:has-text('Running config')")
    config = page.text_content("#config-view")
    assert "m-a" in config and lab.key not in config
    version = page.text_content("#config-version")
    assert page.is_disabled("#reload")
    page.click("#validate")
    expect(page.locator("#validation")).to_contain_text("No differences")
    assert page.is_disabled("#reload")  # nothing to apply
    lab.rewrite(extra_model="m-new")
    try:
        page.click("#validate")
        expect(page.locator("#diff")).to_contain_text("m-new")
        expect(page.locator("#diff li.diff-add")).to_contain_text("m-new")  # an addition, marked as one
        expect(page.locator("#reload")).to_be_enabled()
        assert "m-new" not in models(lab)  # validating applies nothing
        shot(page, "operations")
        page.click("#reload")
        expect(page.locator("#reload-result")).to_contain_text(re.compile(r"Reload (applied|reloaded|ok)"))
        assert "m-new" in models(lab)
        expect(page.locator("#config-version")).not_to_have_text(version)
    finally:
        lab.rewrite()
        req = urllib.request.Request(lab.url + "/admin/config/reload", data=b"{}", method="POST",
                                     headers={"authorization": f"Bearer {lab.key}"})
        urllib.request.urlopen(req).read()


def test_an_invalid_config_is_refused_with_its_problems(page: Any, lab: Any, expect: Any) -> None:
    page.goto(lab.url + "/ui/#/operations")
    expect(page.locator("#config-version")).to_be_visible()
    path = lab.config_dir / "model-mappings.yaml"
    path.write_text("routing:\n  aliases: {route: no-such-model}\n")
    try:
        page.click("#validate")
        expect(page.locator("#validation .error").first).to_be_visible()
        assert page.is_disabled("#reload")
    finally:
        path.unlink()


def test_the_response_cache_stats_keys_and_flush(page: Any, lab: Any, expect: Any) -> None:
    from labgate.server.serve import start_gateway
    from labgate.telemetry.logs import AccessLog
    from labgate.testing.gateway import config_from

    config = config_from(
        {"sim": {"type": "openai_compatible", "base_url": lab.sim.url + "/v1", "models": ["m-a"]}},
        gateway={"auth": {"master_key_env": "LABGATE_UI_TEST_MASTER_KEY"}, "logging": {"requests": False},
                 "store": {"capture": "none"}, "cache": {}})
    gateway = lab.thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False)))
    try:
        body = orjson.dumps({"model": "m-a", "temperature": 0, "messages": [{"role": "user", "content": "cache me"}]})
        for _ in range(2):
            req = urllib.request.Request(gateway.url + "/v1/chat/completions", data=body, method="POST",
                                         headers={"authorization": f"Bearer {lab.key}",
                                                  "content-type": "application/json"})
            urllib.request.urlopen(req).read()
        page.goto(gateway.url + "/ui/#/operations")
        expect(page.locator("#cache-entries")).to_have_text("1")
        expect(page.locator("#cache-hit-rate")).to_have_text("50.0%")
        assert page.locator("#cache code").first.text_content().startswith("labgate:")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#cache-flush")
        expect(page.locator("#cache-entries")).to_have_text("0")
        expect(page.locator("#cache")).to_contain_text("No cached answers.")
    finally:
        lab.thread.run(gateway.stop(grace=1.0))
