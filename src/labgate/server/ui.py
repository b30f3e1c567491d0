"""``/ui/``: the Lab UI's static files (HTML, CSS, ES modules), served by the gateway itself.

The UI is plain files under ``labgate/ui/static/`` talking to the JSON APIs
that exist (``/v1/*``, ``/admin/*``, ``/health/providers``); there is no
server-side rendering and nothing secret in a page. The files are read once,
when the routes are built, into a table name → bytes: a request can only get
one of those names, so no path (``..``, ``%2e%2e``, a symlink, an absolute
path) reaches the file system.

Every answer carries a strict Content-Security-Policy (scripts and styles
from this origin only, no inline script, no framing), ``nosniff`` and
``no-referrer``. ``/ui/config.json`` tells the scripts where the gateway is:
``""`` (this origin) when the gateway serves them, the ``--gateway`` URL when
``labgate ui`` serves them on their own port.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import unquote, urlsplit

import orjson

from labgate.errors import MethodNotAllowedError, RouteNotFoundError
from labgate.server.envelopes import openai_error
from labgate.server.http import Handler, HttpServer, Request, Response
from labgate.server.ids import request_id

PREFIX = "/ui/"
MAX_STATIC_FILES = 200  # the package holds a few dozen; a bound on what is read into memory at start
MAX_STATIC_BYTES = 2 * 1024 * 1024  # per file
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
    ".json": "application/json", ".ico": "image/x-icon", ".txt": "text/plain; charset=utf-8",
}


def csp(gateway_url: str = "") -> str:
    """The policy: this origin only (plus the gateway's, when the UI runs on its own port)."""
    connect = "'self'" + (f" {_origin(gateway_url)}" if gateway_url else "")
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            f"connect-src {connect}; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'; object-src 'none'")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def security_headers(gateway_url: str = "") -> list[tuple[str, str]]:
    return [("content-security-policy", csp(gateway_url)), ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"), ("referrer-policy", "no-referrer"),
            ("cross-origin-opener-policy", "same-origin"), ("cross-origin-resource-policy", "same-origin")]


def load_static() -> dict[str, tuple[bytes, str]]:
    """Every file of ``labgate/ui/static`` (name relative to it, '/'-separated) → (bytes, content type)."""
    root = resources.files("labgate.ui") / "static"
    files: dict[str, tuple[bytes, str]] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                pending.append((entry, name + "/"))
                continue
            kind = CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
            if kind is None or entry.name.startswith("."):
                continue  # only the kinds a page loads
            data = entry.read_bytes()
            if len(data) > MAX_STATIC_BYTES or len(files) >= MAX_STATIC_FILES:
                raise RuntimeError(f"labgate/ui/static/{name}: over the static file limits")
            files[name] = (data, kind)
    return files


class UiFiles:
    """The static files and the handler answering ``GET /ui/…``."""

    def __init__(self, *, gateway_url: str = "") -> None:
        self.files = load_static()
        self.files["config.json"] = (orjson.dumps({"gateway": gateway_url.rstrip("/")}), CONTENT_TYPES[".json"])
        self.headers = security_headers(gateway_url)

    async def serve(self, request: Request) -> Response:
        rid = request_id(request.headers)
        if request.path == "/ui":
            return Response(308, [("location", PREFIX), ("x-request-id", rid), *self.headers])
        name = unquote(request.path[len(PREFIX):]) or "index.html"
        found = self.files.get(name)
        if found is None:
            return openai_error(RouteNotFoundError(f"No UI file {name[:100]!r}."), rid, self.headers)
        data, kind = found
        return Response(200, [("content-type", kind), ("cache-control", "no-cache"), ("x-request-id", rid),
                              *self.headers], data)


def ui_routes(*, gateway_url: str = "") -> tuple[dict[str, dict[str, Handler]], dict[str, dict[str, Handler]]]:
    """``(exact routes, prefix routes)`` for ``server/app.py``'s table."""
    files = UiFiles(gateway_url=gateway_url)
    return {"/ui": {"GET": files.serve}}, {PREFIX: {"GET": files.serve}}


STANDALONE_MAX_BODY_BYTES = 1024  # the standalone UI server takes GETs only


async def start_ui_server(gateway_url: str, *, host: str = "127.0.0.1", port: int = 5001) -> tuple[HttpServer, int]:
    """``labgate ui``: the UI on its own port; the browser calls ``gateway_url`` (which must list this
    origin in ``cors.allow_origins``). Returns the server and the port it listens on."""
    files = UiFiles(gateway_url=gateway_url)

    async def handler(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return openai_error(MethodNotAllowedError(f"{request.method} is not allowed here; the UI server "
                                                      "only serves files."), request_id(), [("allow", "GET")])
        if request.path == "/":
            return Response(308, [("location", PREFIX), ("x-request-id", request_id()), *files.headers])
        if request.path == "/ui" or request.path.startswith(PREFIX):
            return await files.serve(request)
        return openai_error(RouteNotFoundError(f"No route for {request.path[:100]}; the UI is at {PREFIX}."),
                            request_id(), files.headers)

    server = HttpServer(handler, max_body_bytes=STANDALONE_MAX_BODY_BYTES,
                        error_response=lambda exc, headers: openai_error(exc, request_id()))
    bound = await server.start(host, port)
    return server, bound
