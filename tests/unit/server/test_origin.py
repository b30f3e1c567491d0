"""The Host allow-list and the Origin check as pure functions (server/origin.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgate.config.schema.gateway import CorsConfig, GatewayConfig
from labgate.errors import MisdirectedRequestError, PermissionDeniedError
from labgate.server.http import Request
from labgate.server.origin import MAX_REMEMBERED_HOSTS, Edge, host_name


def request(headers: dict[str, str], method: str = "POST") -> Request:
    return Request(method, "/v1/chat/completions", "", headers, b"")


def edge(gateway: dict[str, object] | None = None, *, listen: str | None = "127.0.0.1", auth: bool = False) -> Edge:
    return Edge.from_config(GatewayConfig.model_validate(gateway or {}), listen_host=listen, auth_enabled=auth)


@pytest.mark.parametrize(("host", "name"), [
    ("localhost", "localhost"), ("LocalHost:4000", "localhost"), ("localhost.", "localhost"),
    ("[::1]:80", "[::1]"), ("[::1]", "[::1]"), ("::1", "::1"), ("10.0.0.1:1", "10.0.0.1"), (" a.b :9", "a.b "),
    ("[::1", "[::1"),
])
def test_host_name(host: str, name: str) -> None:
    assert host_name(host) == name


def test_defaults_and_listen_host() -> None:
    rules = edge(listen="gateway.lan")
    assert rules.allowed_hosts == ("localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
                                   "gateway.lan")
    assert edge(listen="0.0.0.0").allowed_hosts == edge(listen="::").allowed_hosts == edge(listen=None).allowed_hosts
    listed = edge({"server": {"allowed_hosts": ["A.example", "*.B.example", "::2"]}}).allowed_hosts
    assert listed is not None and listed[-4:] == ("[::ffff:7f00:1]", "a.example", "*.b.example", "[::2]")
    assert edge(auth=True).allowed_hosts is None
    assert edge({"server": {"allowed_hosts": ["x.example"]}}, auth=True).allowed_hosts is not None


def test_a_missing_host_is_left_to_http_framing() -> None:
    assert edge().refusal(request({})) is None


def test_refusals_are_the_right_errors() -> None:
    rules = edge()
    assert isinstance(rules.refusal(request({"host": "evil.example"})), MisdirectedRequestError)
    refused = rules.refusal(request({"host": "localhost", "origin": "https://evil.example"}))
    assert isinstance(refused, PermissionDeniedError) and refused.code == "origin_not_allowed"
    assert rules.refusal(request({"host": "localhost:1", "origin": "http://localhost:1"})) is None
    assert rules.refusal(request({"host": "localhost:1", "origin": "https://LOCALHOST:1"})) is None
    assert rules.refusal(request({"host": "localhost:1", "origin": "http://localhost:2"})) is not None
    assert rules.refusal(request({"host": "localhost:1", "origin": "ftp://localhost:1"})) is not None


def test_origin_patterns() -> None:
    rules = Edge(hosts=None, cors=CorsConfig(allow_origins=["https://*.example.com", "https://app.test:8443"]))
    allowed = {o: rules.origin_allowed(o, "localhost") for o in (
        "https://a.example.com", "https://a.b.example.com", "https://example.com", "http://a.example.com",
        "https://.example.com", "https://app.test:8443", "https://app.test", "https://APP.test:8443")}
    assert allowed == {"https://a.example.com": True, "https://a.b.example.com": True, "https://example.com": False,
                       "http://a.example.com": False, "https://.example.com": False, "https://app.test:8443": True,
                       "https://app.test": False, "https://APP.test:8443": True}
    assert Edge(hosts=None, cors=CorsConfig(allow_origins=["*"])).origin_allowed("https://any.where", None)


def test_the_verdict_memory_is_bounded() -> None:
    rules = edge()
    for n in range(MAX_REMEMBERED_HOSTS * 3):
        assert rules.refusal(request({"host": f"h{n}.example"})) is not None
    assert len(rules._verdicts) == MAX_REMEMBERED_HOSTS
    assert rules.refusal(request({"host": "localhost:4000"})) is None  # still checked, not remembered


@given(host=st.text(max_size=80), origin=st.one_of(st.none(), st.text(max_size=80)))
def test_any_header_gets_a_verdict_never_an_exception(host: str, origin: str | None) -> None:
    headers = {"host": host} if origin is None else {"host": host, "origin": origin}
    for rules in (edge(), edge({"cors": {"allow_origins": ["*"]}}), edge(auth=True)):
        refusal = rules.refusal(request(headers))
        assert refusal is None or refusal.status in (403, 421)
        if origin is not None and refusal is None:
            assert all(v.isascii() and v.isprintable() for _, v in rules.cors_headers(origin))


@given(st.sampled_from(["localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "10.0.0.7", "[fe80::1]"]),
       st.integers(0, 65535))
def test_served_names_with_any_port(name: str, port: int) -> None:
    assert edge().refusal(request({"host": f"{name}:{port}"})) is None
