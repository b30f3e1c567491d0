"""Request ids: labgate's own (unguessable, never chosen by a client) and the client's, kept apart.

labgate's id names a request in the response (``x-request-id``, the error
envelope's ``request_id``), the access log and the history
(``/admin/history/<id>``): 128 random bits from the OS (``os.urandom``), so
ids are unique across processes, restarts and replicas, and no client can
guess another's id or make its request share one. The bits are read
:data:`BATCH` ids at a time (one system call, not one per request) into a
list that only this process pops from; a forked child starts with an empty
list (``os.register_at_fork``), so no two processes ever hand out the same id. (It was once the client's
``x-request-id`` when given, and a sequential counter otherwise: a client
could reuse a victim's id and have ``/admin/history/<id>`` show its own record.)

A client's ``x-request-id`` is kept as ``client_request_id`` when it is
printable ASCII of at most :data:`MAX_CLIENT_REQUEST_ID` characters (else it
is dropped), stored beside the record and echoed as ``x-client-request-id``.
It never names a record.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

PREFIX = "req_"
MAX_CLIENT_REQUEST_ID = 128  # characters; a longer x-request-id is dropped


BATCH = 64  # ids made per os.urandom call
ready: list[str] = []  # made, not handed out yet; popped from the end (here and by openai.new_record)


def request_id(headers: Mapping[str, str] | None = None) -> str:
    """A new id for a request: always labgate's own, whatever the request's ``headers`` say.

    (``headers`` is accepted so that every surface calls this the same way; a
    client's ``x-request-id`` is read by :func:`client_request_id` instead.)
    """
    try:
        return ready.pop()
    except IndexError:
        _refill()
        return ready.pop()


def _refill() -> None:
    hexed = os.urandom(16 * BATCH).hex()
    ready.extend([PREFIX + hexed[i:i + 32] for i in range(0, 32 * BATCH, 32)])


os.register_at_fork(after_in_child=ready.clear)  # a child never reuses its parent's unused ids


def client_request_id(headers: Mapping[str, str]) -> str | None:
    """The client's ``x-request-id`` if it is printable ASCII and at most 128 characters, else None."""
    given = headers.get("x-request-id")
    if given and len(given) <= MAX_CLIENT_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return None
