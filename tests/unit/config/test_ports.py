"""The port registry: conflicts in the files, and the live state of each port (process lookup via /proc)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from labgate.config.load import load_config
from labgate.config.ports import Holder, _proc_listeners, inspect, static_conflicts
from labgate.config.schema.ports import PortConfig

PROVIDERS = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m1]\n"


def registry(**entries: dict[str, object]) -> dict[str, PortConfig]:
    return {name: PortConfig.model_validate(body) for name, body in entries.items()}


def test_static_conflicts() -> None:
    ports = registry(labgate={"port": 4000}, vllm={"port": 8001}, llama_cpp={"port": 8001},
                     redis={"port": 6379, "protocol": "redis"}, dns={"port": 8001, "protocol": "udp"})
    found = [(p.path, p.message, p.severity) for p in
             static_conflicts(ports, server_host="127.0.0.1", server_port=6379, file="ports.yaml")]
    assert found == [
        ("ports.llama_cpp.port", "port 8001 is also registered to 'vllm'", "error"),
        ("ports.redis.port", "the gateway is configured to listen on port 6379 (gateway.yaml `server.port`), "
                             "which is registered to 'redis'", "error"),
        ("ports.labgate.port", "registered as 4000, but gateway.yaml `server.port` is 6379", "warning"),
    ]


def test_conflicts_are_warnings_when_a_config_loads(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text(PROVIDERS)
    (tmp_path / "ports.yaml").write_text("ports:\n  ollama: {port: 11434}\n  other: {port: 11434}\n")
    config = load_config(tmp_path)
    assert [(p.path, p.severity) for p in config.warnings] == [("ports.other.port", "warning")]
    assert config.ports.ports["ollama"].port == 11434


def test_ports_yaml_is_validated(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text(PROVIDERS)
    (tmp_path / "ports.yaml").write_text("ports:\n  ollama: {port: 11434, requried: true}\n")
    with pytest.raises(Exception) as caught:
        load_config(tmp_path)
    problem = caught.value.problems[0]  # type: ignore[attr-defined]
    assert (problem.path, problem.message, problem.suggestion) == ("ports.ollama.requried", "unknown key", "required")


def test_proc_listeners_parses_tables_and_finds_owners(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (proc / "net" / "tcp").write_text(header +
        "   0: 0100007F:2CA2 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0  0 111 1\n"
        "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  0  0 222 1\n")
    (proc / "net" / "tcp6").write_text(header +
        "   0: 00000000000000000000000000000000:1F41 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000  0  0 333 1\n")
    for pid, name, inode in ((42, "ollama", 111), (77, "python3", 333)):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(name + "\n")
        (proc / str(pid) / "cmdline").write_bytes(name.encode() + b"\0serve\0")
        os.symlink(f"socket:[{inode}]", proc / str(pid) / "fd" / "3")
    assert _proc_listeners(proc) == {("tcp", 11426): [Holder(42, "ollama", "ollama serve")],
                                     ("tcp", 8001): [Holder(77, "python3", "python3 serve")]}


@pytest.mark.asyncio
async def test_inspect_finds_the_process_on_a_port() -> None:
    with socket.socket() as held, socket.socket() as free:
        held.bind(("127.0.0.1", 0))
        held.listen()
        free.bind(("127.0.0.1", 0))  # bound, not listening: free for a server
        port, free_port = held.getsockname()[1], free.getsockname()[1]
        ports = registry(engine={"port": port, "process": "ollama", "required": True},
                         api={"port": free_port, "required": True}, mine={"port": port, "process": "python"})
        states = {s.name: s for s in await inspect(ports, file="ports.yaml", health=False)}
    engine = states["engine"]
    assert engine.listening and any(h.pid == os.getpid() for h in engine.holders)
    assert [p.message for p in engine.problems] == [
        f"port {port} is held by {', '.join(str(h) for h in engine.holders)}, not by 'ollama'"]
    assert states["mine"].problems == ()
    assert (states["api"].listening, [p.severity for p in states["api"].problems]) == (False, ["warning"])
