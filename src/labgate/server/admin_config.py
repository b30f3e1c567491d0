"""``/admin/config``: the active config (secrets masked), its validation, and hot reload.

    GET  /admin/config            what serves: version, load time, last reload, the config (masked), and
                                  which process answered (``worker``: with ``--workers N``, each has its own)
    POST /admin/config/validate   validate the files on disk against what serves, without applying
    POST /admin/config/reload     validate, build and swap; 422 with the report when the files are invalid
                                  (audit log: config.reload; config.rollback with x-labgate-reload: rollback)

With a master key configured these need it. Without one the gateway has no
auth, and these routes answer loopback clients only: a config change is not
something to accept from anyone who can reach the port.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson

from labgate.auth import admit_admin
from labgate.config.problems import ConfigError
from labgate.config.reload import Reloader, changed_routes, diff
from labgate.errors import ConfigInvalidError, LabgateError, ReloadUnavailableError
from labgate.gateway import Gateway
from labgate.server.admin_keys import audit_event
from labgate.server.envelopes import JSON, openai_error, openai_error_body
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id

CONFIG = "/admin/config"
REASON_HEADER = "x-labgate-reload"  # "rollback": `labgate reload` undoing a failed change (audit: config.rollback)


def config_routes(gateway: Gateway, reloader: Reloader | None) -> dict[str, dict[str, Handler]]:
    """The routes for ``server/app.py``'s table (none when the gateway runs without a reloader)."""
    if reloader is None:
        return {}
    surface = ConfigSurface(gateway, reloader)
    return {CONFIG: {"GET": surface.show}, CONFIG + "/validate": {"POST": surface.validate},
            CONFIG + "/reload": {"POST": surface.reload}}


def _json(data: Any, rid: str, status: int = 200) -> Response:
    return Response(status, [JSON, ("x-request-id", rid), ("cache-control", "no-store")], orjson.dumps(data))


class ConfigSurface:
    def __init__(self, gateway: Gateway, reloader: Reloader) -> None:
        self.gateway = gateway
        self.reloader = reloader

    def _admit(self, request: Request) -> None:
        admit_admin(self.gateway.runtime.auth, request.headers, request.client)

    async def show(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            self._admit(request)
        except LabgateError as exc:
            return openai_error(exc, rid)
        # the answering process: under `--workers N` a client sees each worker's own reload state
        return _json({**self.reloader.describe(), "worker": os.getpid()}, rid)

    async def validate(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            self._admit(request)
            self._reloadable()
            loaded = await self.reloader.source.read()
        except ConfigError as exc:
            return _refusal(ConfigInvalidError("The config on disk is invalid.", exc.problems), rid,
                            self.reloader.active.version)
        except LabgateError as exc:
            return openai_error(exc, rid)
        active = self.reloader.active
        return _json({"valid": True, "version": loaded.version, "active_version": active.version,
                      "changes": [c.as_dict() for c in diff(active.view, loaded.view)],
                      "changed_routes": changed_routes(active.view, loaded.view),
                      "warnings": [p.as_dict() for p in loaded.config.warnings]}, rid)

    async def reload(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            self._admit(request)
            self._reloadable()
        except LabgateError as exc:
            return openai_error(exc, rid)
        # shielded: a client that hangs up must not cancel a swap half-way
        result = await asyncio.shield(self.reloader.reload(trigger="api", propagate=True))
        # `labgate reload` marks the reload that rolls a failed config back (cli/reload.py)
        action = "config.rollback" if request.headers.get(REASON_HEADER) == "rollback" else "config.reload"
        await audit_event(self.gateway, request, action, None, {"version": result.previous},
                          {"version": result.version, "status": result.status})
        if not result.ok:
            problems = [p for p in result.problems if p.severity == "error"]
            return _refusal(ConfigInvalidError(f"Reload refused; still serving {result.version}.", problems),
                            rid, result.version, result.as_dict())
        return _json(result.as_dict(), rid)

    def _reloadable(self) -> None:
        if not self.reloader.reloadable:
            raise ReloadUnavailableError("This gateway's config was built in memory, not read from files; "
                                         "there is nothing to reload.")


def _refusal(exc: ConfigInvalidError, rid: str, version: str, result: dict[str, Any] | None = None) -> Response:
    """The error envelope, plus the validation report."""
    body = orjson.loads(openai_error_body(exc, rid))
    body["version"] = version
    body["errors"] = [p.as_dict() for p in exc.problems]  # type: ignore[attr-defined]
    if result is not None:
        body["reload"] = result
    headers = [JSON, ("x-request-id", rid), ("x-should-retry", "false"), ("cache-control", "no-store")]
    return Response(exc.status, headers, orjson.dumps(body))
