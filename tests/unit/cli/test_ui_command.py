"""``labgate ui``: its arguments, and the server it starts (files only, GET only)."""

from __future__ import annotations

import aiohttp
import pytest

from labgate.cli.main import main
from labgate.server.ui import start_ui_server


@pytest.mark.parametrize("url", ["ftp://x", "127.0.0.1:4000", "http://", ""])
def test_a_gateway_that_is_not_an_http_url_is_refused(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "--gateway", url]) == 2
    assert "--gateway must be an http(s) URL" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_the_server_serves_files_and_refuses_the_rest() -> None:
    server, port = await start_ui_server("http://127.0.0.1:4000", port=0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/", allow_redirects=False) as r:
                assert (r.status, r.headers["location"]) == (308, "/ui/")
            async with http.get(base + "/ui/config.json") as r:
                assert await r.json() == {"gateway": "http://127.0.0.1:4000"}
                assert "connect-src 'self' http://127.0.0.1:4000;" in r.headers["content-security-policy"]
            async with http.post(base + "/ui/", data=b"x") as r:
                assert r.status == 405
            async with http.get(base + "/v1/models") as r:
                assert r.status == 404
    finally:
        await server.shutdown(1.0)
