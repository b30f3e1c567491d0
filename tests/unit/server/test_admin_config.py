"""``/admin/config``: who may call it, and what it answers for a config that was not read from files."""

from __future__ import annotations

import orjson
import pytest

from labgate.config.reload import Reloader, loaded_from
from labgate.gateway import Gateway
from labgate.runtime import Runtime
from labgate.server.admin_config import ConfigSurface
from labgate.server.http import Request
from labgate.testing.gateway import config_from

PROVIDERS = {"p": {"type": "vllm", "base_url": "http://127.0.0.1:9", "models": ["m1"]}}


def surface(gateway: dict[str, object] | None = None) -> ConfigSurface:
    config = config_from(PROVIDERS, gateway=gateway)
    engine = Gateway(Runtime.build(config))
    return ConfigSurface(engine, Reloader(engine, loaded_from(config)))


def request(method: str, path: str, *, client: str | None = "127.0.0.1", key: str | None = None) -> Request:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return Request(method, path, "", headers, b"", client)


@pytest.mark.asyncio
async def test_without_a_master_key_only_loopback_clients_are_admitted() -> None:
    admin = surface()
    shown = await admin.show(request("GET", "/admin/config", client="::1"))
    assert shown.status == 200 and orjson.loads(shown.body)["reloadable"] is False
    denied = await admin.show(request("GET", "/admin/config", client="10.1.2.3"))
    assert (denied.status, orjson.loads(denied.body)["error"]["code"]) == (403, "permission_denied")
    refused = await admin.reload(request("POST", "/admin/config/reload"))
    assert (refused.status, orjson.loads(refused.body)["error"]["code"]) == (409, "reload_unavailable")


@pytest.mark.asyncio
async def test_with_a_master_key_it_is_required_from_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TEST_KEY", "sk-admin")
    admin = surface({"auth": {"master_key_env": "ADMIN_TEST_KEY"}})
    assert (await admin.show(request("GET", "/admin/config"))).status == 401
    assert (await admin.show(request("GET", "/admin/config", key="wrong"))).status == 401
    shown = await admin.show(request("GET", "/admin/config", client="10.1.2.3", key="sk-admin"))
    assert shown.status == 200 and b"sk-admin" not in shown.body
