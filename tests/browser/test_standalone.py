"""``labgate ui``: the UI on its own port, streaming from a gateway on another origin (CORS)."""

from __future__ import annotations

import socket
from typing import Any

from labgate.server.serve import start_gateway
from labgate.server.ui import start_ui_server
from labgate.telemetry.logs import AccessLog
from labgate.testing.gateway import config_from


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_standalone_ui_streams_from_another_origin(page: Any, lab: Any, expect: Any) -> None:
    ui_port = free_port()
    config = config_from(
        {"sim": {"type": "openai_compatible", "base_url": lab.sim.url + "/v1", "models": ["m-a"]}},
        gateway={"auth": {"master_key_env": "LABGATE_UI_TEST_MASTER_KEY"}, "store": {"capture": "none"},
                 "logging": {"requests": False}, "cors": {"allow_origins": [f"http://127.0.0.1:{ui_port}"]}})
    gateway = lab.thread.run(start_gateway(config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False)))
    server, port = lab.thread.run(start_ui_server(gateway.url, host="127.0.0.1", port=ui_port))
    try:
        page.goto(f"http://127.0.0.1:{port}/")  # redirected to /ui/
        expect(page.locator("#model option[value='m-a']")).to_be_attached()
        page.locator("#turns textarea").nth(1).fill("from elsewhere")
        page.click("#send")
        expect(page.locator("#ttft")).to_have_count(1)
        assert page.locator("#answer .tok").count() == 24
        assert page.text_content("#request-id").startswith("req_")  # an exposed header, read cross-origin
        assert page.url.startswith(f"http://127.0.0.1:{port}/ui/")
    finally:
        lab.thread.run(server.shutdown(1.0))
        lab.thread.run(gateway.stop(grace=1.0))
