"""Config reloads by SIGHUP and the file watcher, rollbacks and backup restores are in the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from labgate.config.reload import ConfigSource, load_files
from labgate.server.serve import RunningGateway, start_gateway

pytestmark = pytest.mark.asyncio
MASTER = "sk-audit-reloads-test-0123456789"


def write(directory: Path, model: str) -> None:
    (directory / "providers.yaml").write_text(
        "providers:\n  sim:\n    type: openai_compatible\n    base_url: http://127.0.0.1:9/v1\n"
        f"    models: [{model}]\n")
    (directory / "gateway.yaml").write_text(
        "logging: {requests: false}\nauth: {master_key_env: LABGATE_AUDIT_RELOADS_MASTER}\n"
        f"store: {{url: {directory / 'h.db'}}}\n")


async def audit(running: RunningGateway, http: aiohttp.ClientSession, action: str) -> list[dict[str, Any]]:
    async with http.get(running.url + f"/admin/audit?action={action}",
                        headers={"authorization": f"Bearer {MASTER}"}) as r:
        assert r.status == 200
        return list(orjson.loads(await r.read())["data"])


async def test_signal_watcher_rollback_and_restore_are_audited(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_AUDIT_RELOADS_MASTER", MASTER)
    write(tmp_path, "m1")
    loaded = load_files(tmp_path)
    running = await start_gateway(loaded.config, host="127.0.0.1", port=0, source=ConfigSource(path=tmp_path),
                                  loaded=loaded)
    try:
        async with aiohttp.ClientSession() as http:
            reloader = running.reloader
            assert reloader is not None
            first = reloader.active.version
            write(tmp_path, "m2")
            sighup = await reloader.reload(trigger="SIGHUP")  # what serve.py's SIGHUP handler runs
            write(tmp_path, "m3")
            watched = await reloader.reload(trigger="watch")  # what the watcher runs once the files settle
            (tmp_path / "providers.yaml").write_text("providers: [not a mapping")
            refused = await reloader.reload(trigger="watch")
            assert (sighup.status, watched.status, refused.status) == ("applied", "applied", "refused")
            trail = await audit(running, http, "config.reload")
            assert [(e["actor"], e["after"]["status"]) for e in trail] == [
                ("watcher", "refused"), ("watcher", "applied"), ("signal", "applied")]
            assert trail[2]["before"] == {"version": first} and trail[2]["after"]["version"] == sighup.version
            # `labgate reload` rolling back marks its reload; the admin API's caller is the actor
            write(tmp_path, "m1")
            headers = {"authorization": f"Bearer {MASTER}", "x-labgate-reload": "rollback"}
            async with http.post(running.url + "/admin/config/reload", headers=headers) as r:
                assert r.status == 200
            (rollback,) = await audit(running, http, "config.rollback")
            assert rollback["actor"].startswith("master:") and rollback["after"]["version"] == first
            # restoring a backup over the admin API
            auth = {"authorization": f"Bearer {MASTER}"}
            async with http.get(running.url + "/admin/config/backups", headers=auth) as r:
                backups = orjson.loads(await r.read())
            name = next(b["name"] for b in backups["data"] if b["version"] == sighup.version)
            async with http.post(running.url + f"/admin/config/backups/{name}/restore", headers=auth) as r:
                assert r.status == 200, await r.read()
            (restore,) = await audit(running, http, "config.restore")
            assert (restore["target"], restore["after"]["version"]) == (name, sighup.version)
            assert restore["before"] == {"version": first}
    finally:
        await running.stop(grace=1.0)
