"""``POST /v1/feedback``: a vote on a request labgate answered, kept in the history database.

    POST /v1/feedback             {"request_id": "req_…", "score": 1–5 | "thumbs": "up"|"down"
                                   | "preferred": true, "comment": "…", "who": "…", "comparison_id": "…"}
                                  → 201 {"id": "fb_…", "object": "feedback", "request_id", …}
    GET  /admin/analytics/feedback   votes per model (history filters apply to the records voted on)

Any client with an API key may vote (the same key check as ``/v1/chat/completions``).
``request_id`` is labgate's id (the ``x-request-id`` the answer carried). A vote
on an id the history does not hold is refused with **404** ``record_not_found``
— after the writer has been flushed once when records are waiting to be written,
so a vote sent right after the answer (before its record reached the database)
is not refused. Bad fields: 400 naming
the field. History off (``store.capture: none``): 503.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import orjson

from labgate.auth import presented_key
from labgate.errors import (
    BodyTooLargeError,
    HistoryUnavailableError,
    InvalidJSONError,
    LabgateError,
    RecordNotFoundError,
    RequestError,
)
from labgate.gateway import Gateway
from labgate.server.admin_history import HistorySurface, _filter
from labgate.server.envelopes import JSON, openai_error
from labgate.server.fields import is_int
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id
from labgate.store import feedback as store_feedback
from labgate.store.base import Store
from labgate.store.feedback import Feedback

log = logging.getLogger("labgate.server")

MAX_FEEDBACK_BYTES = 16 * 1024  # a larger body: 413
MAX_COMMENT_CHARS = 4000
MAX_WHO_CHARS = 200
MAX_ID_CHARS = 128  # request_id, comparison_id
SCORE_RANGE = (1, 5)
THUMBS = {"up": 1, "down": -1}
_FIELDS = frozenset({"request_id", "score", "thumbs", "preferred", "comment", "who", "comparison_id"})


def feedback_routes(gateway: Gateway) -> dict[str, dict[str, Handler]]:
    """The routes for ``server/app.py``'s table."""
    surface = FeedbackSurface(gateway)
    return {"/v1/feedback": {"POST": surface.create}, "/feedback": {"POST": surface.create},
            "/admin/analytics/feedback": {"GET": surface.by_model}}


def _text(payload: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise RequestError(f"'{name}' is required.", param=name)
        return None
    if not isinstance(value, str) or (required and not value):
        raise RequestError(f"'{name}' must be a{' non-empty' if required else ''} string.", param=name)
    if len(value) > limit:
        raise RequestError(f"'{name}' must be at most {limit} characters; got {len(value)}.", param=name)
    if "\x00" in value:
        raise RequestError(f"'{name}' must not hold NUL characters.", param=name)
    return value


def parse(body: bytes) -> dict[str, Any]:
    """The validated fields of a feedback body (400 naming the first bad one)."""
    if len(body) > MAX_FEEDBACK_BYTES:
        raise BodyTooLargeError(f"A feedback body may be at most {MAX_FEEDBACK_BYTES} bytes; got {len(body)}.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSONError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidJSONError("The request body must be a JSON object.")
    unknown = sorted(k for k in payload if k not in _FIELDS)
    if unknown:
        raise RequestError(f"Unknown field {unknown[0][:60]!r}; a feedback body holds "
                           f"{', '.join(sorted(_FIELDS))}.", param=unknown[0][:60])
    rid = _text(payload, "request_id", MAX_ID_CHARS, required=True)
    score = payload.get("score")
    if score is not None and not (is_int(score) and SCORE_RANGE[0] <= score <= SCORE_RANGE[1]):
        raise RequestError(f"'score' must be an integer from {SCORE_RANGE[0]} to {SCORE_RANGE[1]}; "
                           f"got {orjson.dumps(score).decode()[:40]}.", param="score")
    thumbs = payload.get("thumbs")
    if thumbs is not None and thumbs not in THUMBS:
        raise RequestError(f"'thumbs' must be \"up\" or \"down\"; got {orjson.dumps(thumbs).decode()[:40]}.",
                           param="thumbs")
    preferred = payload.get("preferred")
    if preferred is not None and not isinstance(preferred, bool):
        raise RequestError("'preferred' must be a boolean.", param="preferred")
    if score is None and thumbs is None and not preferred:
        raise RequestError("A vote needs 'score' (1–5), 'thumbs' (\"up\" | \"down\") or 'preferred': true.",
                           param="score")
    return {"request_id": rid, "score": score, "thumbs": None if thumbs is None else THUMBS[thumbs],
            "preferred": preferred, "comment": _text(payload, "comment", MAX_COMMENT_CHARS),
            "who": _text(payload, "who", MAX_WHO_CHARS),
            "comparison_id": _text(payload, "comparison_id", MAX_ID_CHARS)}


class FeedbackSurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._history = HistorySurface(gateway)

    async def create(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            key_id = self.gateway.runtime.auth.check(presented_key(request.headers))
            fields = parse(request.body)
            store = self._store()
            vote = Feedback(feedback_id="fb_" + secrets.token_hex(12), timestamp=time.time(), key_id=key_id,
                            **fields)
            if not await self._known(store, vote.request_id):
                raise RecordNotFoundError(f"No history record with request id {vote.request_id!r}: feedback "
                                          "names labgate's x-request-id of an answered request.",
                                          param="request_id")
            await store_feedback.add(store, vote)
        except LabgateError as exc:
            return openai_error(exc, rid)
        except Exception:
            log.exception("feedback could not be stored (request %s)", rid)
            return openai_error(HistoryUnavailableError("The history store failed to take the feedback; "
                                                        "it has been logged."), rid)
        shown = {"id": vote.feedback_id, "object": "feedback", "request_id": vote.request_id,
                 "score": vote.score, "thumbs": {1: "up", -1: "down"}.get(vote.thumbs or 0),
                 "preferred": vote.preferred, "comment": vote.comment, "who": vote.who,
                 "comparison_id": vote.comparison_id, "created": int(vote.timestamp)}
        return Response(201, [JSON, ("x-request-id", rid), ("cache-control", "no-store")], orjson.dumps(shown))

    async def by_model(self, request: Request) -> Response:
        return await self._history._serve(  # the admin check, filters and error handling of /admin/analytics
            request, lambda store, params: store_feedback.by_model(store, _filter(params)))

    def _store(self) -> Store:
        history = self.gateway.history
        if history is None:
            raise HistoryUnavailableError("Request history is off (store.capture: none): feedback has nowhere "
                                          "to go.")
        return history.store

    async def _known(self, store: Store, rid: str) -> bool:
        if await store_feedback.record_exists(store, rid):
            return True
        history = self.gateway.history
        assert history is not None
        if history.stats().get("queued", 1) == 0:
            return False  # nothing waits to be written: the id is unknown (a flood of bogus ids costs no flush)
        await history.flush()  # the record may still be queued: the answer went out before it was written
        return await store_feedback.record_exists(store, rid)
