"""``/admin/config/backups``: admission, names that are not backups (traversal), a backup that no longer verifies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from labgate.config.reload import ConfigSource, load_files
from labgate.server.serve import RunningGateway, start_gateway

KEY = "sk-backup-test-0123456789"


@pytest_asyncio.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RunningGateway, Path]]:
    monkeypatch.setenv("LABGATE_BACKUP_TEST_KEY", KEY)
    config = tmp_path / "conf"
    config.mkdir()
    (config / "providers.yaml").write_bytes(orjson.dumps({"providers": {"p": {
        "type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "models": ["m1"]}}}))
    (config / "gateway.yaml").write_bytes(orjson.dumps({"auth": {"master_key_env": "LABGATE_BACKUP_TEST_KEY"},
                                                        "store": {"capture": "none"}, "logging": {"requests": False}}))
    loaded = load_files(config)
    running = await start_gateway(loaded.config, host="127.0.0.1", port=0, source=ConfigSource(path=config),
                                  loaded=loaded)
    try:
        yield running, config
    finally:
        await running.stop(grace=1.0)


async def call(running: RunningGateway, method: str, path: str, key: str | None = KEY) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http, http.request(method, running.url + path, headers=headers) as r:
        return r.status, orjson.loads(await r.read())


@pytest.mark.asyncio
async def test_list_create_and_restore(served: Any) -> None:
    running, config = served
    status, listed = await call(running, "GET", "/admin/config/backups")
    assert status == 200 and Path(listed["directory"]) == config / "backups"
    status, made = await call(running, "POST", "/admin/config/backups")
    assert status == 201 and made["reason"] == "api"
    (config / "providers.yaml").write_text("providers: {}\n")
    status, restored = await call(running, "POST", f"/admin/config/backups/{made['name']}/restore")
    assert status == 200 and restored["restored"] == made["name"]
    assert b"m1" in (config / "providers.yaml").read_bytes()
    _, listed = await call(running, "GET", "/admin/config/backups")
    kept = next(b for b in listed["data"] if b["name"] == restored["kept_as"])
    assert kept["reason"] == f"before restoring {made['name']}"  # the replaced files are not lost


@pytest.mark.asyncio
@pytest.mark.parametrize("method,path", [("GET", "/admin/config/backups"), ("POST", "/admin/config/backups"),
                                         ("POST", "/admin/config/backups/x/restore")])
async def test_the_master_key_is_required(served: Any, method: str, path: str) -> None:
    running, _ = served
    assert (await call(running, method, path, key=None))[0] == 401
    assert (await call(running, method, path, key="sk-wrong"))[0] == 401


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["..%2f..%2fetc", "..", "%2e%2e", "../conf", "nope", "a/b", "%00"])
async def test_a_name_that_is_no_backup_is_404_and_touches_nothing(served: Any, name: str) -> None:
    running, config = served
    await call(running, "POST", "/admin/config/backups")
    before = {p.name: p.read_bytes() for p in config.iterdir() if p.is_file()}
    status, body = await call(running, "POST", f"/admin/config/backups/{name}/restore")
    assert status == 404 and body["error"]["code"] in ("record_not_found", "not_found")
    assert {p.name: p.read_bytes() for p in config.iterdir() if p.is_file()} == before


@pytest.mark.asyncio
async def test_a_tampered_backup_is_refused(served: Any) -> None:
    running, config = served
    _, made = await call(running, "POST", "/admin/config/backups")
    (config / "backups" / made["name"] / "providers.yaml").write_text("providers: {}\n")
    status, body = await call(running, "POST", f"/admin/config/backups/{made['name']}/restore")
    assert status == 422 and "checksum" in orjson.dumps(body["errors"]).decode()
    assert b"m1" in (config / "providers.yaml").read_bytes()
