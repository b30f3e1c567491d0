"""Accessible basics in Chromium: keyboard-only navigation, a phone-sized viewport in dark mode."""

from __future__ import annotations

from typing import Any

PAGES = ("playground", "compare", "history", "analytics", "operations", "access")


def test_keyboard_only(page: Any, lab: Any, expect: Any) -> None:
    page.goto(lab.url + "/ui/#/playground")
    expect(page.locator("#model")).to_be_visible()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    for target in ("Playground", "Compare"):  # the nav links come next, in order
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == target
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Compare models")
    assert page.evaluate("document.activeElement.id") == "main"  # focus moves to the new page
    # every control on every page is reachable by Tab and has a name
    for name in PAGES:
        page.goto(f"{lab.url}/ui/#/{name}")
        expect(page.locator("nav a[aria-current='page']")).to_have_attribute("data-page", name)
        page.wait_for_load_state("networkidle")
        unnamed = page.evaluate("""[...document.querySelectorAll('main button, main select, main input, main textarea')]
            .filter(e => !e.disabled && e.offsetParent !== null)
            .filter(e => !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim() || e.placeholder))
            .map(e => e.outerHTML.slice(0, 80))""")
        assert unnamed == [], (name, unnamed)


def test_phone_sized_viewport_in_dark_mode(phone_page: Any, lab: Any, shot: Any, expect: Any) -> None:
    page = phone_page
    for name in PAGES:
        page.goto(f"{lab.url}/ui/#/{name}")
        expect(page.locator("h1")).to_be_visible()
        page.wait_for_load_state("networkidle")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, f"{name}: the page is {overflow}px wider than the phone"
    page.goto(lab.url + "/ui/#/playground")
    page.locator("#turns textarea").nth(1).fill("hello from a phone")
    page.click("#send")
    expect(page.locator("#ttft")).to_have_count(1)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 23, 26)"  # prefers-color-scheme: dark
    shot(page, "phone-dark-playground")
