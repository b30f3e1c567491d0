"""``/admin/config/backups``: the config backups (``config/backup.py``) over HTTP, for the Lab UI.

    GET  /admin/config/backups                  every backup, newest first, and where they are
    POST /admin/config/backups                  back up the files on disk now (reason "api")
    POST /admin/config/backups/{name}/restore   verify, keep the current files as a backup, then put the
                                                backup's files back in the config directory

A restore changes files only: what serves changes at the next reload, which
the caller validates first (``POST /admin/config/validate`` shows the diff).
A backup that does not verify (a checksum mismatch, or it no longer loads)
is refused with 422 and its problems. A restore is recorded in the audit log
(``config.restore``, its backup as the target). The same admission as ``/admin/config``:
the master key, or loopback clients when no key is set. A ``name`` is looked
up among the listed backups (as ``labgate backup restore`` does), never used
as a path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson

from labgate.auth import admit_admin
from labgate.config import backup
from labgate.config.reload import Reloader
from labgate.errors import ConfigInvalidError, LabgateError, RecordNotFoundError, ReloadUnavailableError
from labgate.gateway import Gateway
from labgate.server.admin_config import _refusal
from labgate.server.admin_keys import audit_event
from labgate.server.envelopes import JSON, openai_error
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id

BACKUPS = "/admin/config/backups"
RESTORE = "/restore"


def backup_routes(gateway: Gateway, reloader: Reloader | None) -> tuple[dict[str, dict[str, Handler]],
                                                                          dict[str, dict[str, Handler]]]:
    """``(exact routes, prefix routes)`` for ``server/app.py``'s table (none without a reloader)."""
    if reloader is None:
        return {}, {}
    surface = BackupSurface(gateway, reloader)
    return ({BACKUPS: {"GET": surface.list, "POST": surface.create}},
            {BACKUPS + "/": {"POST": surface.restore}})


def _json(data: Any, rid: str, status: int = 200) -> Response:
    return Response(status, [JSON, ("x-request-id", rid), ("cache-control", "no-store")], orjson.dumps(data))


class BackupSurface:
    def __init__(self, gateway: Gateway, reloader: Reloader) -> None:
        self.gateway = gateway
        self.reloader = reloader

    def _where(self, request: Request) -> tuple[Path, Path]:
        """The config path and its backup directory, once the caller is admitted."""
        admit_admin(self.gateway.runtime.auth, request.headers, request.client)
        path = self.reloader.source.path
        if path is None or not self.reloader.reloadable:
            raise ReloadUnavailableError("This gateway's config was built in memory, not read from files; "
                                         "it has no backups.")
        return path, backup.default_dir(path, self.reloader.active.config.gateway.config.backup_dir)

    async def list(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            _, directory = self._where(request)
        except LabgateError as exc:
            return openai_error(exc, rid)
        found = await asyncio.to_thread(backup.list_backups, directory)
        return _json({"directory": str(directory), "data": [b.as_dict() for b in found]}, rid)

    async def create(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            path, directory = self._where(request)
        except LabgateError as exc:
            return openai_error(exc, rid)
        made = await asyncio.to_thread(backup.create, path, directory, reason="api")
        return _json(made.as_dict(), rid, 201)

    @staticmethod
    def _restore(found: backup.Backup, path: Path, directory: Path) -> backup.Backup | None:
        """As ``labgate backup restore``: the current files are kept as a backup first."""
        saved = None
        if backup.config_files(path):
            saved = backup.ensure(path, directory, reason=f"before restoring {found.name}")
        backup.restore(found, path)
        return saved

    async def restore(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            path, directory = self._where(request)
            tail = request.path[len(BACKUPS) + 1:]
            if not tail.endswith(RESTORE) or "/" in tail[:-len(RESTORE)] or tail == RESTORE:
                raise RecordNotFoundError(f"No route for POST {request.path[:120]}; "
                                          f"use POST {BACKUPS}/<name>{RESTORE}.")
            name = unquote(tail[:-len(RESTORE)])
            found = await asyncio.to_thread(backup.find, directory, name)
            if found is None:
                raise RecordNotFoundError(f"No backup named {name[:100]!r} in {directory}.")
            problems = await asyncio.to_thread(backup.verify, found)
            if problems:
                return _refusal(ConfigInvalidError(f"Backup {found.name} does not verify; nothing restored.",
                                                   problems), rid, self.reloader.active.version)
            saved = await asyncio.to_thread(self._restore, found, path, directory)
        except LabgateError as exc:
            return openai_error(exc, rid)
        await audit_event(self.gateway, request, "config.restore", found.name,
                          {"version": self.reloader.active.version},
                          {"version": found.version, "kept_as": saved.name if saved is not None else None})
        return _json({"restored": found.name, "version": found.version, "active_version": self.reloader.active.version,
                      "kept_as": saved.name if saved is not None else None,
                      "next": "POST /admin/config/validate shows the diff; POST /admin/config/reload applies it"}, rid)
