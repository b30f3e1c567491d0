"""The port registry (``ports.yaml``) against the config and against the machine.

Two kinds of conflict:

* *static*, from the files alone: two services registered on one port, or the
  gateway configured to listen on a port registered to another service;
* *live*, from the machine: a registered port held by a process other than
  the one expected (``process:``), or the gateway's port held by something
  that is not labgate.

Static conflicts are warnings when a config loads (``serve`` prints them at
start) and errors under ``labgate validate --check-ports``. The process that
holds a port comes from ``psutil`` when it is installed, else from
``/proc/net/tcp*`` and ``/proc/*/fd`` (Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labgate.config.problems import Problem
from labgate.config.schema.ports import PortConfig
from labgate.errors import LabgateError
from labgate.providers.http import fetch

GATEWAY = "labgate"  # the registry entry (or process name) that stands for the gateway itself
_HEALTH_TIMEOUT_S = 2.0
_ANY = {"0.0.0.0", "::", "*", ""}


def _same_host(a: str, b: str) -> bool:
    """Whether two listen addresses can collide (a wildcard collides with everything)."""
    local = {"127.0.0.1", "localhost", "::1"}
    return a in _ANY or b in _ANY or a == b or (a in local and b in local)


def _family(protocol: str) -> str:
    return "udp" if protocol == "udp" else "tcp"


def gateway_entry(ports: Mapping[str, PortConfig]) -> str | None:
    """The registry entry that stands for labgate: named ``labgate`` or ``process: labgate``."""
    if GATEWAY in ports:
        return GATEWAY
    return next((name for name, p in ports.items() if p.process == GATEWAY), None)


def static_conflicts(ports: Mapping[str, PortConfig], *, server_host: str, server_port: int,
                     file: str) -> Iterator[Problem]:
    """Conflicts visible in the files alone (as errors; loading downgrades them to warnings)."""
    names = list(ports)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = ports[a], ports[b]
            if (pa.port == pb.port and _family(pa.protocol) == _family(pb.protocol)
                    and _same_host(pa.host, pb.host)):
                yield Problem(file, f"ports.{b}.port", f"port {pb.port} is also registered to {a!r}")
    own = gateway_entry(ports)
    for name, entry in ports.items():
        if name == own or _family(entry.protocol) != "tcp":
            continue
        if entry.port == server_port and _same_host(entry.host, server_host):
            yield Problem(file, f"ports.{name}.port", f"the gateway is configured to listen on port "
                          f"{server_port} (gateway.yaml `server.port`), which is registered to {name!r}")
    if own is not None and server_port and ports[own].port != server_port:
        yield Problem(file, f"ports.{own}.port", f"registered as {ports[own].port}, but gateway.yaml "
                      f"`server.port` is {server_port}", severity="warning")


# --- the live state of a port --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holder:
    """A process listening on a port."""

    pid: int | None
    name: str | None
    cmdline: str | None = None

    def __str__(self) -> str:
        if self.pid is None:
            return "unknown process"
        return f"{self.name or '?'} (pid {self.pid})"

    def is_named(self, expected: str) -> bool:
        needle = expected.lower()
        return needle in (self.name or "").lower() or needle in (self.cmdline or "").lower()


@dataclass(frozen=True, slots=True)
class PortState:
    """What a registered (or asked-about) port looks like right now."""

    name: str | None  # the registry entry, None for a port that is not registered
    port: int
    protocol: str
    listening: bool
    holders: tuple[Holder, ...] = ()
    required: bool = False
    reserved: bool = False
    health: str | None = None  # "ok", "failed: …", or None when there is no health URL or no listener
    problems: tuple[Problem, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port, "protocol": self.protocol,
                "state": "listening" if self.listening else "free", "required": self.required,
                "reserved": self.reserved, "health": self.health,
                "processes": [{"pid": h.pid, "name": h.name} for h in self.holders],
                "problems": [p.as_dict() for p in self.problems]}


def listeners() -> dict[tuple[str, int], list[Holder]]:
    """Every listening socket on the machine: (family, port) → the processes holding it."""
    try:
        import psutil  # optional: `pip install labgate[ops]`; /proc is enough on Linux
    except ImportError:
        return _proc_listeners(Path("/proc"))
    found: dict[tuple[str, int], list[Holder]] = {}
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return _proc_listeners(Path("/proc"))
    for conn in connections:
        udp = conn.type == socket.SOCK_DGRAM
        if not conn.laddr or (not udp and conn.status != psutil.CONN_LISTEN):
            continue
        holder = Holder(conn.pid, None)
        if conn.pid:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(conn.pid)
                holder = Holder(conn.pid, proc.name(), " ".join(proc.cmdline()))
        key = ("udp" if udp else "tcp", conn.laddr.port)
        if holder not in found.setdefault(key, []):
            found[key].append(holder)
    return found


def _proc_listeners(proc: Path) -> dict[tuple[str, int], list[Holder]]:
    """``/proc/net/{tcp,tcp6,udp,udp6}`` for listening sockets, ``/proc/*/fd`` for their owners."""
    inodes: dict[str, tuple[str, int]] = {}
    for table, family in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            state = fields[3]
            if (family == "tcp" and state != "0A") or (family == "udp" and state != "07"):
                continue  # 0A: TCP LISTEN; 07: an unconnected (bound) UDP socket
            port = int(fields[1].rsplit(":", 1)[1], 16)
            inodes[fields[9]] = (family, port)
    found: dict[tuple[str, int], list[Holder]] = {key: [] for key in inodes.values()}
    for pid, inode in _socket_inodes(proc, set(inodes)):
        holder = Holder(pid, _read(proc / str(pid) / "comm"),
                        (_read(proc / str(pid) / "cmdline") or "").replace("\0", " ").strip() or None)
        holders = found[inodes[inode]]
        if holder not in holders:
            holders.append(holder)
    return found


def _socket_inodes(proc: Path, wanted: set[str]) -> Iterator[tuple[int, str]]:
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # another user's process, or gone
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in wanted:
                yield int(entry.name), target[8:-1]


def _read(path: Path) -> str | None:
    try:  # a process names itself: any bytes, not always UTF-8
        return path.read_bytes().decode("utf-8", "replace").strip()
    except OSError:
        return None


def _connectable(host: str, port: int) -> bool:
    """A TCP listener we could not attribute (no permission to read its process) still answers."""
    target = "127.0.0.1" if host in _ANY or host == "localhost" else host
    with contextlib.suppress(OSError), socket.create_connection((target, port), timeout=0.5):
        return True
    return False


async def inspect(ports: Mapping[str, PortConfig], *, file: str, only: Iterable[int] | None = None,
                  required_only: bool = False, gateway_port: int | None = None,
                  health: bool = True) -> list[PortState]:
    """The live state of each registered port (or of ``only`` those port numbers), with its problems.

    ``health``: also call each listening service's ``health_url``."""
    table = await asyncio.to_thread(listeners)
    wanted = set(only) if only is not None else None
    states: list[PortState] = []
    entries = [(n, p) for n, p in ports.items()
               if (wanted is None or p.port in wanted) and (not required_only or p.required)]
    states.extend(await asyncio.gather(*(_state(health, table, n, p, file) for n, p in entries)))
    registered = {p.port for _, p in entries}
    for port in sorted((wanted or set()) - registered):
        holders = tuple(table.get(("tcp", port), ()))
        listening = bool(holders) or _connectable("127.0.0.1", port)
        states.append(PortState(None, port, "tcp", listening, holders))
    if gateway_port and not required_only and wanted is None:
        known = [h for h in table.get(("tcp", gateway_port), ()) if h.pid is not None]
        if known and not any(h.is_named(GATEWAY) for h in known):
            problem = Problem(file, "server.port", f"the gateway's port {gateway_port} is held by "
                              f"{', '.join(map(str, known))}, not by labgate")
            states.append(PortState("(gateway)", gateway_port, "http", True, tuple(known), problems=(problem,)))
    return states


async def _state(health_check: bool, table: Mapping[tuple[str, int], list[Holder]], name: str,
                 entry: PortConfig, file: str) -> PortState:
    key = (_family(entry.protocol), entry.port)
    holders = tuple(table.get(key, ()))
    listening = key in table or (key[0] == "tcp" and _connectable(entry.host, entry.port))
    path = f"ports.{name}"
    problems: list[Problem] = []
    expected = entry.process or (GATEWAY if name == GATEWAY else None)
    known = [h for h in holders if h.pid is not None]
    if listening and expected and known and not any(h.is_named(expected) for h in known):
        problems.append(Problem(file, path, f"port {entry.port} is held by {', '.join(map(str, known))}, "
                                f"not by {expected!r}"))
    if listening and entry.status == "reserved":
        problems.append(Problem(file, path, f"port {entry.port} is reserved but "
                                f"{', '.join(map(str, known)) or 'something'} listens on it"))
    if not listening and entry.required:
        problems.append(Problem(file, path, f"required service {name!r} is not listening on port {entry.port}",
                                severity="warning"))
    health = None
    if listening and entry.health_url and health_check:
        health = await _probe(entry.health_url)
        if health != "ok":
            problems.append(Problem(file, f"{path}.health_url", f"health check {health}", severity="warning"))
    return PortState(name, entry.port, entry.protocol, listening, holders, entry.required,
                     entry.status == "reserved", health, tuple(problems))


async def _probe(url: str) -> str:
    try:
        status, _ = await fetch(url, timeout=_HEALTH_TIMEOUT_S, name="health check")
    except LabgateError as exc:
        return f"failed: {exc.message}"
    except ValueError:
        return "failed: not an http:// or https:// URL"
    return "ok" if status < 400 else f"failed: HTTP {status}"
