"""``/admin/keys`` and ``/admin/audit``: virtual keys and the audit log (``labgate keys``, ``labgate audit``).

Admission is the admin rule (the master key; loopback only when none is set); a virtual key is never an admin.

    GET    /admin/keys                    every key (no secret, no hash); ?include_revoked=false
    POST   /admin/keys                    {name, project?, team?, models?, expires_at? | expires_in_s?, rpm?, tpm?,
                                           budget_usd?, budget_period?} → 201 {"key": "lg-…" (shown once), …}
    GET    /admin/keys/{id or name}
    PATCH  /admin/keys/{id or name}       the same fields (unchanged when absent)
    POST   /admin/keys/{id or name}/revoke
    POST   /admin/keys/{id or name}/rotate → {"key": "lg-…" (the new secret, shown once), …}
    GET    /admin/audit                   ?since= &until= (Unix seconds; until exclusive: the next page is
                                           until=<the oldest ts shown>) &action= (exact, or a prefix ending in
                                           '.') &q= (a substring of actor, target, before
                                           or after, ≤ 200 chars) &limit=
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from labgate import audit
from labgate.auth import admit_admin, key_id, presented_key
from labgate.errors import KeysUnavailableError, LabgateError, RequestError
from labgate.gateway import Gateway
from labgate.keys import KeyAdmin, KeyRing, KeySpec
from labgate.server.envelopes import JSON, openai_error
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id

log = logging.getLogger("labgate.server")
KEYS = "/admin/keys"
AUDIT = "/admin/audit"
MAX_BODY = 64 * 1024  # an admin body past this is refused
MAX_SEARCH = 200  # /admin/audit?q= past this many characters is refused

Run = Callable[[KeyRing, str, dict[str, str]], Awaitable[tuple[int, Any]]]


def key_routes(gateway: Gateway) -> tuple[dict[str, dict[str, Handler]], dict[str, dict[str, Handler]]]:
    """(exact routes, prefix routes) for ``server/app.py``'s table."""
    surface = KeysSurface(gateway)
    return ({KEYS: {"GET": surface.list, "POST": surface.create}, AUDIT: {"GET": surface.audit}},
            {KEYS + "/": {"GET": surface.show, "PATCH": surface.update, "POST": surface.action}})


def actor(request: Request) -> str:
    """Who did it, for the audit log: the master key's id, else the loopback client."""
    presented = presented_key(request.headers)
    return f"master:{key_id(presented)}" if presented else f"loopback:{request.client or 'unix'}"


async def audit_event(gateway: Gateway, request: Request, action: str, target: str | None,
                      before: Any, after: Any) -> None:
    """Append an admin action of another surface (config reload, cache flush) to the audit log.

    The log lives beside the keys; with virtual keys off there is no store to write to. A failure
    to write is logged, never turned into an error for an action that already happened.
    """
    ring = gateway.runtime.auth.keyring
    if ring is None:
        return
    try:
        await audit.record_action(ring.store, actor(request), action, target, before, after)
    except Exception:
        log.exception("audit: could not record %s", action)


class KeysSurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def list(self, request: Request) -> Response:
        async def run(ring: KeyRing, who: str, params: dict[str, str]) -> tuple[int, Any]:
            keys = await KeyAdmin(ring.store).list(include_revoked=params.get("include_revoked") != "false")
            return 200, {"data": [k.public() for k in keys]}
        return await self._serve(request, run)

    async def create(self, request: Request) -> Response:
        async def run(ring: KeyRing, who: str, params: dict[str, str]) -> tuple[int, Any]:
            secret, key = await KeyAdmin(ring.store).create(KeySpec.parse(_body(request)), actor=who)
            await ring.refresh()
            return 201, {"key": secret, **key.public()}
        return await self._serve(request, run)

    async def show(self, request: Request) -> Response:
        async def run(ring: KeyRing, who: str, params: dict[str, str]) -> tuple[int, Any]:
            return 200, (await KeyAdmin(ring.store).get(_ident(request))).public()
        return await self._serve(request, run)

    async def update(self, request: Request) -> Response:
        async def run(ring: KeyRing, who: str, params: dict[str, str]) -> tuple[int, Any]:
            key = await KeyAdmin(ring.store).update(_ident(request), KeySpec.parse(_body(request)), actor=who)
            await ring.refresh()
            return 200, key.public()
        return await self._serve(request, run)

    async def action(self, request: Request) -> Response:
        """``…/{id}/revoke`` and ``…/{id}/rotate``."""
        async def run(ring: KeyRing, who: str, params: dict[str, str]) -> tuple[int, Any]:
            ident, _, verb = request.path[len(KEYS) + 1:].rpartition("/")
            admin = KeyAdmin(ring.store)
            if verb == "revoke" and ident:
                key = await admin.revoke(unquote(ident), actor=who)
                await ring.refresh()
                log.warning("keys: %s (%s) revoked by %s", key.id, key.name, who)
                return 200, key.public()
            if verb == "rotate" and ident:
                secret, key = await admin.rotate(unquote(ident), actor=who)
                await ring.refresh()
                return 200, {"key": secret, **key.public()}
            raise RequestError(f"POST {request.path}: use {KEYS}/{{id}}/revoke or {KEYS}/{{id}}/rotate.")
        return await self._serve(request, run)

    async def audit(self, request: Request) -> Response:
        async def run(ring: KeyRing, who: str, params: dict[str, str]) -> tuple[int, Any]:
            since, until = _float(params, "since"), _float(params, "until")
            limit = int(_float(params, "limit") or 100)
            text = params.get("q") or None
            if text is not None and len(text) > MAX_SEARCH:
                raise RequestError(f"'q' is longer than {MAX_SEARCH} characters.", param="q")
            # SQLite ends a LIKE pattern at NUL (matching everything); PostgreSQL refuses NUL in text
            if text is not None and any(ord(ch) < 32 for ch in text):
                raise RequestError("'q' must not contain control characters.", param="q")
            return 200, {"data": await audit.entries(ring.store, since=since, until=until,
                                                     action=params.get("action"), text=text, limit=limit)}
        return await self._serve(request, run)

    async def _serve(self, request: Request, run: Run) -> Response:
        rid = request_id(request.headers)
        try:
            admit_admin(self.gateway.runtime.auth, request.headers, request.client)
            ring = self.gateway.runtime.auth.keyring
            if ring is None:
                raise KeysUnavailableError("Virtual keys are off (gateway.yaml: auth.virtual_keys: false).")
            params = {k: v[-1] for k, v in parse_qs(request.query).items()}
            status, data = await run(ring, actor(request), params)
        except LabgateError as exc:
            return openai_error(exc, rid)
        except Exception:  # the key store (SQLite/PostgreSQL) failed: logged, not shown
            log.exception("keys: the key store failed to answer %s (request %s)", request.path, rid)
            return openai_error(KeysUnavailableError("The key store failed to answer; it has been logged."), rid)
        return Response(status, [JSON, ("x-request-id", rid), ("cache-control", "no-store")], orjson.dumps(data))


def _ident(request: Request) -> str:
    ident = unquote(request.path[len(KEYS) + 1:])
    if not ident or "/" in ident:
        raise RequestError(f"{request.method} {request.path}: give one key id or name.")
    return ident


def _body(request: Request) -> dict[str, Any]:
    if len(request.body) > MAX_BODY:
        raise RequestError(f"The body is larger than {MAX_BODY} bytes.")
    try:
        data = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError:
        raise RequestError("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise RequestError("The body must be a JSON object.")
    return data


def _float(params: dict[str, str], name: str) -> float | None:
    given = params.get(name)
    if given is None:
        return None
    try:
        value = float(given)
    except ValueError:
        raise RequestError(f"'{name}' must be a number.", param=name) from None
    if not 0 <= value < 1e12:
        raise RequestError(f"'{name}' is out of range.", param=name)
    return value
