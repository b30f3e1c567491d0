"""``labgate serve`` says, at start-up, when it listens beyond loopback with no master key (a real process)."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from labgate.server.origin import is_loopback
from labgate.testing.process import labgate

KEY = "sk-edge-banner-key-0123456789"
WARNING = ("labgate: WARNING: listening on 0.0.0.0, reachable from other machines, with NO master key: anyone who "
           "can reach this port can use your providers and spend their keys. Set auth.master_key_env (and the "
           "variable it names) or listen on 127.0.0.1.")


@contextmanager
def serve(config: Path, host: str, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """``labgate serve --host HOST --port 0``; yields what it printed before listening, and its port."""
    with labgate("serve", "--config", str(config), "--host", host, "--port", "0", env=env,
                 stdout=subprocess.PIPE) as gw:
        yield gw.said, gw.port


def health(port: int, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers={"host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "providers.yaml").write_text(
        "providers:\n  sim:\n    type: openai_compatible\n    base_url: http://127.0.0.1:9/v1\n    models: [m1]\n")
    (tmp_path / "gateway.yaml").write_text("auth:\n  master_key_env: LABGATE_EDGE_BANNER_KEY\n"
                                           "store:\n  capture: none\n")
    return tmp_path


def test_all_interfaces_without_a_key_warns_and_still_checks_hosts(config: Path) -> None:
    with serve(config, "0.0.0.0", {"LABGATE_EDGE_BANNER_KEY": ""}) as (banner, port):
        statuses = [health(port, host) for host in ("attacker.example", f"127.0.0.1:{port}", "192.168.1.20")]
    assert WARNING in banner.splitlines()
    assert ("labgate: answering for Host localhost, 127.0.0.1, [::1], [::ffff:127.0.0.1], [::ffff:7f00:1] and IP "
            "addresses; browser origins: its own only") in banner.splitlines()
    assert statuses == [421, 200, 200]


def test_all_interfaces_with_a_key_does_not_warn(config: Path) -> None:
    with serve(config, "0.0.0.0", {"LABGATE_EDGE_BANNER_KEY": KEY}) as (banner, port):
        status = health(port, "gateway.example.com")
    assert "WARNING" not in banner
    assert "labgate: answering for any Host; browser origins: its own only" in banner.splitlines()
    assert status == 200


def test_loopback_without_a_key_does_not_warn(config: Path) -> None:
    with serve(config, "127.0.0.1", {"LABGATE_EDGE_BANNER_KEY": ""}) as (banner, _):
        pass
    assert "NO AUTH" in banner and "WARNING" not in banner


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True),
    ("[::ffff:127.0.0.1]", True), ("127.0.0.2", True), ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
    ("", False), ("192.168.1.5", False), ("::ffff:10.0.0.1", False), ("gateway.example.com", False),
])
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
