"""Start real llama.cpp servers (via ``xl_serve.py`` / xllamacpp) for the test suite.

    with llamacpp_servers(workdir) as up:
        up.chat_url    # "http://127.0.0.1:PORT"  alias "tiny"        (no /v1 suffix)
        up.embed_url   # "http://127.0.0.1:PORT"  alias "tiny-embed"  (embedding mode, 4 slots)

The tiny GGUF is generated once per path (``ensure_tiny_gguf``). Each server runs in its own
subprocess; its llama.cpp log goes to ``workdir/<alias>.log``. On exit both get SIGTERM, then
SIGKILL if they have not exited within a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
XL_SERVE = HERE / "xl_serve.py"
MODEL_FILENAME = "tiny-llama.gguf"
CHAT_ALIAS = "tiny"
EMBED_ALIAS = "tiny-embed"

_lock = threading.Lock()
_generated: set[Path] = set()


def _load_sibling(name: str) -> ModuleType:
    """Import ``tests/upstreams/<name>.py`` by path (``tests/`` is not a package)."""
    modname = f"_labgate_upstreams_{name}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def ensure_tiny_gguf(directory: str | os.PathLike[str]) -> Path:
    """Generate the tiny model into ``directory`` once per process; return its path."""
    path = (Path(directory) / MODEL_FILENAME).resolve()
    with _lock:
        if path not in _generated or not path.is_file():
            _load_sibling("make_tiny_gguf").make_tiny_gguf(path)
            _generated.add(path)
    return path


@dataclass
class ServerProcess:
    alias: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    _log_file: object = field(default=None, repr=False)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit status."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout)
            return self.proc.returncode
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            if self._log_file is not None:
                self._log_file.close()  # type: ignore[attr-defined]
                self._log_file = None


def spawn_server(model: Path, alias: str, log_path: Path, *, embedding: bool = False,
                 parallel: int = 2, ctx_size: int = 2048, threads: int = 2) -> ServerProcess:
    """Start ``xl_serve.py`` in a subprocess (does not wait for it; see ``wait_ready``)."""
    cmd = [sys.executable, str(XL_SERVE), str(model), "--port", "0", "--alias", alias,
           "--parallel", str(parallel), "--ctx-size", str(ctx_size), "--threads", str(threads), "--exit-with-parent"]
    if embedding:
        cmd.append("--embedding")
    log = open(log_path, "wb")  # noqa: SIM115 - closed by ServerProcess.stop()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                            cwd=str(log_path.parent))
    return ServerProcess(alias=alias, proc=proc, log_path=log_path, _log_file=log)


def wait_ready(servers: list[ServerProcess], timeout: float = 30.0) -> None:
    """Block until every server printed ``READY <url>``; raise RuntimeError otherwise."""
    deadline = time.monotonic() + timeout
    pending: dict[int, tuple[ServerProcess, bytearray]] = {}
    sel = selectors.DefaultSelector()
    try:
        for s in servers:
            assert s.proc.stdout is not None
            fd = s.proc.stdout.fileno()
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
            pending[fd] = (s, bytearray())
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(s.alias for s, _ in pending.values())
                tails = "\n".join(f"--- {s.alias} log ---\n{s.log_tail()}" for s, _ in pending.values())
                raise RuntimeError(f"llama.cpp server(s) not READY after {timeout:.0f}s: {names}\n{tails}")
            for key, _ in sel.select(min(left, 0.5)):
                fd = key.fd  # type: ignore[assignment]
                s, buf = pending[fd]
                chunk = os.read(fd, 4096)
                if not chunk:  # EOF: the process died before READY
                    s.proc.wait(5)
                    raise RuntimeError(f"llama.cpp server {s.alias!r} exited with {s.proc.returncode} "
                                       f"before READY\n{s.log_tail()}")
                buf += chunk
                for line in bytes(buf).split(b"\n")[:-1]:  # complete lines only
                    if line.startswith(b"READY "):
                        s.url = line.split()[1].decode().rstrip("/")
                        sel.unregister(fd)
                        del pending[fd]
                        break
    finally:
        sel.close()


@dataclass(frozen=True)
class LlamaCppServers:
    chat_url: str           # base URL, no /v1: serves model alias ``chat_model``
    embed_url: str          # base URL, no /v1: embedding mode, serves ``embed_model``
    model_path: Path
    chat_model: str = CHAT_ALIAS
    embed_model: str = EMBED_ALIAS
    chat_log: Path | None = None
    embed_log: Path | None = None


@contextmanager
def llamacpp_servers(workdir: str | os.PathLike[str], *, timeout: float = 30.0) -> Iterator[LlamaCppServers]:
    """Generate the tiny model into ``workdir`` and run a chat and an embedding server on it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = ensure_tiny_gguf(workdir)
    with ExitStack() as stack:
        chat = spawn_server(model, CHAT_ALIAS, workdir / f"{CHAT_ALIAS}.log", parallel=4, ctx_size=4096)
        stack.callback(chat.stop)
        embed = spawn_server(model, EMBED_ALIAS, workdir / f"{EMBED_ALIAS}.log", embedding=True,
                             parallel=4, ctx_size=4096)
        stack.callback(embed.stop)
        wait_ready([chat, embed], timeout)
        yield LlamaCppServers(chat_url=chat.url, embed_url=embed.url, model_path=model,
                              chat_log=chat.log_path, embed_log=embed.log_path)


if __name__ == "__main__":  # manual use: run both servers until Ctrl-C
    import tempfile

    with tempfile.TemporaryDirectory() as d, llamacpp_servers(sys.argv[1] if len(sys.argv) > 1 else d) as up:
        print(f"chat  {up.chat_url}  ({up.chat_model})\nembed {up.embed_url}  ({up.embed_model})", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
