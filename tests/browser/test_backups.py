"""Backups from the Operations page: list, restore (then validate shows the diff, reload applies it)."""

from __future__ import annotations

import urllib.request
from typing import Any

import orjson


def admin(lab: Any, method: str, path: str) -> Any:
    req = urllib.request.Request(lab.url + path, method=method, data=b"{}" if method == "POST" else None,
                                 headers={"authorization": f"Bearer {lab.key}"})
    with urllib.request.urlopen(req) as answer:
        return orjson.loads(answer.read())


def test_restore_a_backup_then_reload(page: Any, lab: Any, expect: Any) -> None:
    lab.rewrite(extra_model="m-new")
    made = admin(lab, "POST", "/admin/config/backups")  # a backup holding m-new
    lab.rewrite()  # the files on disk no longer have it
    page.goto(lab.url + "/ui/#/operations")
    row = page.locator(f"#backups tr[data-backup='{made['name']}']")
    expect(row).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator(".restore").click()
    expect(page.locator("#diff")).to_contain_text("m-new")  # restored files: validate ran, the diff shows
    page.click("#reload")
    expect(page.locator("#reload-result")).to_be_visible()
    assert "m-new" in [m["id"] for m in admin(lab, "GET", "/v1/models")["data"]]
    lab.rewrite()
    admin(lab, "POST", "/admin/config/reload")
