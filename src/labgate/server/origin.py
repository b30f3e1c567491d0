"""Who may talk to the gateway from a browser: the ``Host`` allow-list and the ``Origin`` check (CORS).

Two attacks on a gateway that runs without a master key on a user's machine,
both from a web page the user happens to open:

- **Cross-site requests.** A page can ``POST`` to ``http://127.0.0.1:4000``
  (a "simple" CORS request with ``text/plain`` needs no preflight) and spend
  upstream keys, even if it cannot read the answer. Browsers name the page
  in ``Origin``: a request whose ``Origin`` is neither the gateway's own nor
  listed in ``cors.allow_origins`` is refused (403) before it is routed.
  SDKs, curl and servers send no ``Origin`` and are not affected.
- **DNS rebinding.** A page at ``attacker.example`` re-points its own name
  at 127.0.0.1; its requests are then same-origin *to the browser* and can
  read ``/admin/*``. They still carry ``Host: attacker.example``: a ``Host``
  that names no host this gateway answers for is refused (421 Misdirected
  Request). Rebinding needs a DNS name, so IP literals are always accepted.

:class:`Edge` is built once per config (a reload builds a new one) and
checks a request with set lookups on headers already parsed; the verdict
for each ``Host`` value is remembered (up to :data:`MAX_REMEMBERED_HOSTS`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from labgate.config.schema.gateway import CorsConfig, GatewayConfig
from labgate.errors import LabgateError, MisdirectedRequestError, PermissionDeniedError
from labgate.server.envelopes import header_value
from labgate.server.http import Request

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]")
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]", "*"})
MAX_REMEMBERED_HOSTS = 256  # distinct Host values whose verdict is kept (a flood of others is checked each time)

Headers = list[tuple[str, str]]


def host_name(host: str) -> str:
    """The name in a ``Host`` value, without its port: lower case, brackets kept on IPv6, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host if end < 0 else host[:end + 1]
    name, colon, _ = host.rpartition(":")
    if not colon or ":" in name:  # no port, or a bare IPv6 address
        name = host
    return name.rstrip(".")


def _normalised(name: str) -> str:
    name = host_name(name)
    if ":" in name and not name.startswith("["):
        return f"[{name}]"
    return name


def _is_ip(name: str) -> bool:
    if name.startswith("["):
        if not name.endswith("]"):
            return False
        name = name[1:-1]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Edge:
    """The ``Host`` allow-list and the CORS policy of one config."""

    __slots__ = ("_any_host", "_any_origin", "_cors", "_hosts", "_origin_patterns", "_origins", "_preflight",
                 "_suffixes", "_verdicts", "allowed_hosts", "checks_host")

    def __init__(self, *, hosts: Iterable[str] | None, cors: CorsConfig) -> None:
        """``hosts``: the names answered for (``*``, ``*.example.com`` allowed); None: any host."""
        self._any_host = hosts is None or "*" in hosts
        self.checks_host = not self._any_host  # False: only a request with an Origin header has anything to check
        names = [] if hosts is None else [h for h in hosts if h != "*"]
        self._hosts = frozenset(_normalised(h) for h in names if not h.startswith("*."))
        self._suffixes = tuple(_normalised(h)[1:] for h in names if h.startswith("*."))  # ".example.com"
        # what the banner shows: the names in the order given
        self.allowed_hosts = None if self._any_host else tuple(dict.fromkeys(
            f"*{_normalised(h)[1:]}" if h.startswith("*.") else _normalised(h) for h in names))
        self._verdicts: dict[str, bool] = {}
        origins = [o.rstrip("/").lower() for o in cors.allow_origins]
        self._any_origin = "*" in origins
        self._origins = frozenset(o for o in origins if "*" not in o)
        self._origin_patterns = tuple(tuple(o.split("*", 1)) for o in origins if "*" in o and o != "*")
        self._cors = cors
        self._preflight: Headers = [("access-control-allow-methods", ", ".join(cors.allow_methods)),
                                    ("access-control-max-age", str(cors.max_age_s))]

    @classmethod
    def from_config(cls, config: GatewayConfig, *, listen_host: str | None, auth_enabled: bool) -> Edge:
        """The defaults: loopback names, IP literals and the listen host; any host when a master key
        is set and ``server.allowed_hosts`` is not (rebinding matters where there is no key to steal)."""
        given = config.server.allowed_hosts
        if given is None and auth_enabled:
            return cls(hosts=None, cors=config.cors)
        hosts = [*LOOPBACK_NAMES, *(given or ())]
        if listen_host is not None and listen_host.lower() not in WILDCARD_ADDRESSES:
            hosts.append(listen_host)
        return cls(hosts=hosts, cors=config.cors)

    def refusal(self, request: Request) -> LabgateError | None:
        """Why ``request`` must not be served (a wrong ``Host``, a foreign ``Origin``), or None."""
        headers = request.headers
        host = headers.get("host")
        if host is not None and not self._any_host:
            verdict = self._verdicts.get(host)
            if verdict is None:
                verdict = self._host_allowed(host)
                if len(self._verdicts) < MAX_REMEMBERED_HOSTS:
                    self._verdicts[host] = verdict
            if not verdict:
                return MisdirectedRequestError(
                    f"This gateway does not answer for the host {host_name(host)[:100]!r} (Host header). "
                    "If that name is yours, add it to server.allowed_hosts in gateway.yaml.", code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return PermissionDeniedError(
                f"Browser requests from the origin {origin[:100]!r} are not allowed. "
                "If that page is yours, add it to cors.allow_origins in gateway.yaml.", code="origin_not_allowed")
        return None

    def _host_allowed(self, host: str) -> bool:
        name = host_name(host)
        port = host.strip()[len(name):].lstrip(".")
        if port and not (port[0] == ":" and port[1:].isdigit()):
            return False
        name = _normalised(name)
        return name in self._hosts or name.endswith(self._suffixes) or _is_ip(name)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Same-origin (the page came from this gateway), or listed in ``cors.allow_origins``."""
        origin = origin.lower()
        if host is not None and origin.endswith(host.lower()) and origin[:-len(host)] in ("http://", "https://"):
            return True
        return self._any_origin or origin in self._origins or any(
            origin.startswith(head) and origin.endswith(tail) and len(origin) > len(head) + len(tail)
            for head, tail in self._origin_patterns)

    @staticmethod
    def is_preflight(request: Request) -> bool:
        return (request.method == "OPTIONS" and "origin" in request.headers
                and "access-control-request-method" in request.headers)

    def preflight_headers(self, request: Request) -> Headers:
        """The answer to a preflight from an allowed origin: what may be sent, and for how long."""
        headers = self.cors_headers(request.headers["origin"])
        headers.extend(self._preflight)
        allowed = self._cors.allow_headers
        asked = request.headers.get("access-control-request-headers")
        if "*" in allowed:
            if asked:
                headers.append(("access-control-allow-headers", asked))
        elif allowed:
            headers.append(("access-control-allow-headers", ", ".join(allowed)))
        return headers

    def cors_headers(self, origin: str) -> Headers:
        """The headers of any answer to an allowed origin."""
        cors = self._cors
        headers = [("access-control-allow-origin", header_value(origin)), ("vary", "Origin")]
        if cors.allow_credentials:
            headers.append(("access-control-allow-credentials", "true"))
        if cors.expose_headers:
            headers.append(("access-control-expose-headers", ", ".join(cors.expose_headers)))
        return headers


def is_loopback(host: str) -> bool:
    """Whether a listen address only takes connections from this machine (``::ffff:127.0.0.1`` counts)."""
    name = host_name(host) if host.startswith("[") else host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
