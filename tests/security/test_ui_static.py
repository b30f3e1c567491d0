"""The Lab UI's static files: only the packaged files are served, never a path outside them, and every
answer carries the strict policy (no inline script, no framing, no sniffing)."""

from __future__ import annotations

import re
from importlib import resources

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgate.server.http import Request
from labgate.server.ui import UiFiles, csp, load_static


def get(files: UiFiles, path: str) -> tuple[int, dict[str, str], bytes]:
    import asyncio

    answer = asyncio.run(files.serve(Request("GET", path, "", {}, b"", "127.0.0.1")))
    return answer.status, dict(answer.headers), answer.body


FILES = UiFiles()


@pytest.mark.parametrize("path", [
    "/ui/../server/ui.py", "/ui/..%2f..%2fpyproject.toml", "/ui/%2e%2e/%2e%2e/etc/passwd", "/ui//etc/passwd",
    "/ui/js/../../__init__.py", "/ui/..\\..\\__init__.py", "/ui/%2fetc%2fpasswd", "/ui/index.html%00.js",
    "/ui/js/", "/ui/.", "/ui/..", "/ui/" + "a/" * 500, "/ui/__init__.py", "/ui/js/app.js/..",
])
def test_no_path_outside_the_packaged_files(path: str) -> None:
    status, headers, body = get(FILES, path)
    assert status == 404
    assert headers["content-security-policy"] == csp() and headers["x-content-type-options"] == "nosniff"
    assert orjson.loads(body)["error"]["code"] == "not_found"


@settings(max_examples=300)
@given(st.lists(st.sampled_from([*"./%2eEfF\\~abcjs_-", "%2e", "%2f", "%5c", "..", "%00", "js", "app.js",
                                 "index.html"]), max_size=20).map("".join))
def test_any_path_serves_a_packaged_file_or_404(tail: str) -> None:
    status, _, body = get(FILES, "/ui/" + tail)
    if status == 200:
        assert body in {data for data, _ in FILES.files.values()}
    else:
        assert status == 404


def test_every_answer_has_the_strict_headers() -> None:
    for path in ("/ui/", "/ui/index.html", "/ui/js/app.js", "/ui/style.css", "/ui/config.json", "/ui"):
        status, headers, _ = get(FILES, path)
        assert status in (200, 308)
        policy = headers["content-security-policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert get(FILES, "/ui/js/app.js")[1]["content-type"].startswith("text/javascript")


def test_no_inline_script_style_or_handler_in_the_pages() -> None:
    """What the policy forbids must not be needed: the pages would break under it."""
    for name, (data, kind) in load_static().items():
        text = data.decode()
        if kind.startswith("text/html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), name
            assert not re.search(r"\son[a-z]+\s*=", text), name
            assert not re.search(r"\sstyle\s*=", text), name
        if name.endswith(".js"):
            assert "innerHTML" not in text and "eval(" not in text and "new Function" not in text, name


def test_no_secret_is_embedded() -> None:
    """The pages hold no key: config.json names only the gateway, the key lives in session storage."""
    assert orjson.loads(get(FILES, "/ui/config.json")[2]) == {"gateway": ""}
    standalone = UiFiles(gateway_url="http://10.0.0.5:4000/")
    assert orjson.loads(get(standalone, "/ui/config.json")[2]) == {"gateway": "http://10.0.0.5:4000"}
    assert "connect-src 'self' http://10.0.0.5:4000;" in get(standalone, "/ui/")[1]["content-security-policy"]
    for name, (data, _) in load_static().items():
        assert b"localStorage.setItem" not in data, name
        assert not re.search(rb"sk-[A-Za-z0-9]{8,}", data), name


def test_the_package_ships_the_files() -> None:
    root = resources.files("labgate.ui") / "static"
    assert (root / "index.html").is_file() and (root / "js" / "app.js").is_file()
