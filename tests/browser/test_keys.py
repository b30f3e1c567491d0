"""The Access page in Chromium: virtual keys (create with the secret shown once, use, edit, revoke), a key's
budget moving after a request, the audit log filtered, and a virtual key told it cannot open admin pages."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from typing import Any

import orjson


def chat(lab: Any, key: str) -> int:
    body = orjson.dumps({"model": "m-a", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(lab.url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as answer:
            orjson.loads(answer.read())
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def admin(lab: Any, path: str) -> Any:
    req = urllib.request.Request(lab.url + path, headers={"authorization": f"Bearer {lab.key}"})
    with urllib.request.urlopen(req) as answer:
        return orjson.loads(answer.read())


def test_create_use_edit_revoke_and_audit_a_key(page: Any, lab: Any, shot: Any, expect: Any) -> None:
    page.goto(lab.url + "/ui/#/access")
    expect(page.locator("h1")).to_have_text("Access")
    page.click("summary:has-text('Create a key')")
    form = page.locator("form[aria-label='Create a key']")
    form.locator("input[name=name]").fill("ui-lab")
    form.locator("input[name=models]").fill("m-a, m-b")
    form.locator("input[name=rpm]").fill("100")
    form.locator("input[name=budget_usd]").fill("2")
    page.click("#key-create-submit")
    expect(page.locator("#secret")).to_have_text(re.compile(r"^lg-[A-Za-z0-9_-]{43}$"))
    secret = page.text_content("#secret") or ""
    first_hint = secret[-4:]
    expect(page.locator("#secret-box")).to_contain_text("you won't see it again")
    expect(page.locator("#budgets tr", has_text="key ui-lab").locator("td.used")).to_have_text("$0")
    row = page.locator("#keys tr[data-key='ui-lab']")
    expect(row.locator("td").nth(2)).to_have_text("lg-…" + secret[-4:])
    expect(row.locator("td").nth(4)).to_have_text("m-a, m-b")
    expect(row.locator("td.budget")).to_have_text("$0 of $2 / month")
    shot(page, "access-key-created")
    page.click("#secret-done")
    expect(page.locator("#secret")).to_have_count(0)
    page.reload()
    expect(page.locator("#keys tr[data-key='ui-lab']")).to_be_visible()
    assert secret not in page.content()  # shown once: the listing never has it

    # the key works, within its models; its budget's use moves after the request
    assert chat(lab, secret) == 200
    page.click("#budgets-refresh")
    budget_row = page.locator("#budgets tr", has_text="key ui-lab")
    expect(budget_row.locator("td.used")).not_to_have_text("$0")
    used = page.text_content("#budgets tr:has-text('key ui-lab') td.used")
    assert used is not None and float(used.lstrip("$")) > 0
    key_id = page.text_content("#keys tr[data-key='ui-lab'] td:nth-child(2)")
    spend = {b["budget"]: b["used_usd"] for b in admin(lab, "/admin/budgets")["data"]}
    assert spend[f"key:{key_id}"] > 0

    # edit its rpm (PATCH)
    page.click("button[aria-label='Edit ui-lab']")
    edit = page.locator("#key-edit form")
    edit.locator("input[name=rpm]").fill("7")
    page.click("#key-save-edit")
    expect(page.locator("#keys tr[data-key='ui-lab'] td.rpm")).to_have_text("7")
    assert next(k for k in admin(lab, "/admin/keys")["data"] if k["name"] == "ui-lab")["rpm"] == 7
    expect(page.locator("#audit tr[data-action='key.update'] td.change").first).to_have_text("rpm: 100 → 7")
    shot(page, "access")

    # rotate it: the new secret is shown once (and copied), the old one is refused
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[aria-label='Rotate ui-lab']")
    expect(page.locator("#secret")).not_to_have_text(secret)
    rotated = page.text_content("#secret") or ""
    assert rotated.startswith("lg-") and chat(lab, rotated) == 200 and chat(lab, secret) == 401
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab.url)
    page.click("#secret-copy")
    expect(page.locator("#toast")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == rotated
    page.click("#secret-done")
    secret = rotated

    # revoke it: the next request with it is refused
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[aria-label='Revoke ui-lab']")
    expect(page.locator("#keys tr[data-key='ui-lab'] td.status")).to_contain_text("revoked")
    deadline = time.monotonic() + 30  # a hang guard: it waits on the key ring
    while chat(lab, secret) != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert chat(lab, secret) == 401

    # the audit log, filtered to this key's actions, newest first
    page.fill("#audit-action", "key.")
    page.fill("#audit-q", "ui-lab")
    page.click("#audit-search")
    expect(page.locator("#audit tbody tr")).to_have_count(4)
    assert page.locator("#audit td.action").all_text_contents() == ["key.revoke", "key.rotate", "key.update",
                                                                    "key.create"]
    expect(page.locator("#audit tr[data-action='key.update'] td.change")).to_contain_text("rpm: 100 → 7")
    expect(page.locator("#audit tr[data-action='key.revoke'] td.change")).to_contain_text(
        re.compile(r"revoked_at: null → \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"))
    expect(page.locator("#audit tr[data-action='key.create'] td.change")).to_have_text(
        f"name=\"ui-lab\", key_hint=\"lg-…{first_hint}\", models=[\"m-a\",\"m-b\"], rpm=100, budget_usd=2, "
        "budget_period=\"month\"")
    shot(page, "access-audit")
    page.fill("#audit-action", "key.revoke")
    page.click("#audit-search")
    expect(page.locator("#audit tbody tr")).to_have_count(1)
    page.fill("#audit-since", "2099-01-01T00:00")  # UTC: nothing yet
    page.click("#audit-search")
    expect(page.locator("#audit")).to_have_text("No audit entries match.")


def test_the_audit_log_pages_back(page: Any, lab: Any, expect: Any) -> None:
    req = urllib.request.Request(lab.url + "/admin/keys", data=b'{"name": "pager"}', method="POST",
                                 headers={"authorization": f"Bearer {lab.key}", "content-type": "application/json"})
    key_id = orjson.loads(urllib.request.urlopen(req).read())["id"]
    for rpm in range(1, 53):  # 52 updates: more than one page of 50
        body = orjson.dumps({"rpm": rpm})
        req = urllib.request.Request(f"{lab.url}/admin/keys/{key_id}", data=body, method="PATCH",
                                     headers={"authorization": f"Bearer {lab.key}", "content-type": "application/json"})
        urllib.request.urlopen(req).read()
    page.goto(lab.url + "/ui/#/access")
    page.fill("#audit-action", "key.update")
    page.fill("#audit-q", key_id)
    page.click("#audit-search")
    expect(page.locator("#audit tbody tr")).to_have_count(50)
    expect(page.locator("#audit td.change").first).to_contain_text("rpm: 51 → 52")
    expect(page.locator("#audit-newer")).to_be_disabled()
    page.click("#audit-older")
    expect(page.locator("#audit tbody tr")).to_have_count(2)
    assert page.locator("#audit td.change").all_text_contents() == ["rpm: 1 → 2", "rpm: null → 1"]
    expect(page.locator("#audit-older")).to_be_disabled()
    page.click("#audit-newer")
    expect(page.locator("#audit tbody tr")).to_have_count(50)


def test_a_virtual_key_is_told_admin_pages_need_the_master_key(bare_page: Any, lab: Any, expect: Any) -> None:
    req = urllib.request.Request(lab.url + "/admin/keys", data=b'{"name": "not-admin"}', method="POST",
                                 headers={"authorization": f"Bearer {lab.key}", "content-type": "application/json"})
    secret = orjson.loads(urllib.request.urlopen(req).read())["key"]
    page = bare_page
    page.add_init_script(f"sessionStorage.setItem('labgate.key', {orjson.dumps(secret).decode()});")
    page.goto(lab.url + "/ui/#/access")
    expect(page.locator("#key-dialog")).to_be_visible()
    expect(page.locator("#key-reason")).to_contain_text("virtual key (lg-…) cannot use the admin API")
    page.keyboard.press("Escape")
    expect(page.locator("#keys .refusal")).to_contain_text("needs the master key")
    expect(page.locator("#audit .refusal")).to_be_visible()
    # the same key is good for the playground's API calls
    assert chat(lab, secret) == 200


def test_configured_limits_and_budgets_with_their_use(page: Any, lab: Any, expect: Any) -> None:
    from labgate.server.serve import start_gateway
    from labgate.telemetry.logs import AccessLog
    from labgate.testing.gateway import config_from

    config = config_from(
        {"sim": {"type": "openai_compatible", "base_url": lab.sim.url + "/v1", "models": ["m-a"],
                 "pricing": {"input_per_1m": 1.0, "output_per_1m": 2.0}}},
        gateway={"auth": {"master_key_env": "LABGATE_UI_TEST_MASTER_KEY"}, "logging": {"requests": False},
                 "store": {"capture": "none"}, "rate_limits": {"rpm": 600, "models": {"m-*": {"tpm": 90000}}},
                 "budgets": {"limits": [{"scope": "global", "limit_usd": 25, "period": "day"},
                                        {"scope": "model", "name": "m-a", "limit_usd": 10, "period": "total"}]}})
    gateway = lab.thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False)))
    try:
        page.goto(gateway.url + "/ui/#/access")
        expect(page.locator("#budgets tr[data-budget='global'] td.used")).to_have_text("$0")
        assert orjson.loads(page.text_content("#rate-limits"))["models"] == {"m-*": {"rpm": None, "tpm": 90000}}
        assert [b["scope"] for b in orjson.loads(page.text_content("#budgets-config"))["limits"]] == ["global", "model"]
        expect(page.locator("#budgets tr[data-budget='model:m-a'] td").nth(6)).to_have_text("never")
        served = type("Served", (), {"url": gateway.url})()
        assert chat(served, lab.key) == 200
        page.click("#budgets-refresh")
        for budget in ("global", "model:m-a"):
            used = page.locator(f"#budgets tr[data-budget='{budget}'] td.used")
            expect(used).not_to_have_text("$0")
            assert float((used.text_content() or "").lstrip("$")) > 0
    finally:
        lab.thread.run(gateway.stop(grace=1.0))


def test_cost_is_shown_where_it_was_a_dash(page: Any, lab: Any, expect: Any) -> None:
    """History and analytics read `cost` as the APIs now return it (the provider is priced)."""
    assert chat(lab, lab.key) == 200
    lab.flush()
    newest = admin(lab, "/admin/history?limit=1")["data"][0]
    assert newest["cost"] > 0 and admin(lab, "/admin/analytics/summary")["tokens"]["cost"] > 0
    page.goto(lab.url + "/ui/#/history")
    expect(page.locator(f"#results tr[data-request-id='{newest['request_id']}'] td.cost")).to_have_text(
        re.compile(r"^\$[0-9.]+(e-\d+)?$"))
    page.goto(lab.url + "/ui/#/analytics")
    expect(page.locator("#sum-cost")).to_have_text(re.compile(r"^\$[0-9.]+(e-\d+)?$"))
