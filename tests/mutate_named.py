"""The mutants named in issue 19, each applied by hand: a text replacement in one module, its tests run,
the module restored. Each must be KILLED (a test fails). ``python tests/mutate_named.py [WORDS]`` runs
those whose name holds one of WORDS (all without). docs/testing.md#named-mutants lists them.

It edits the source tree in place, one file at a time, and puts it back even when interrupted; do not
run it while editing, or beside a ``make mutate`` run that is copying ``src``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (name, module, original text, mutated text, test files)
MUTANTS = [
    ("serve: --workers 2 forks one worker",
     "src/labgate/cli/serve.py",
     "    for _ in range(workers):",
     "    for _ in range(1):",
     "tests/contract/test_cli_serve.py tests/contract/test_reload_process.py"),
    ("serve: a worker does not tell its siblings after an API reload",
     "src/labgate/cli/serve.py",
     "    os.kill(os.getppid(), signal.SIGHUP)  # the parent relays",
     "    pass  # the parent relays",
     "tests/contract/test_reload_process.py"),
    ("pool: hand-over at deadline leaked",
     "src/labgate/providers/pool.py",
     ("                if handed is None:\n" "                    self._free_slot()\n" "                else:\n"
      "                    self.put(handed)"),
     "                pass",
     "tests/security/test_pool_lifecycle.py"),
    ("pool: connect timeout reported as connection error",
     "src/labgate/providers/pool.py",
     "                raise UpstreamTimeoutError(\n" '                    f"{self.where} timed out connecting',
     "                raise UpstreamConnectionError(\n" '                    f"{self.where} timed out connecting',
     "tests/security/test_pool_lifecycle.py"),
    ("pool: unexpected bytes no longer abort",
     "src/labgate/providers/connection.py",
     ("            self._dirty = True\n" "            self._pool.forget(self)\n" "            self.abort()\n"
      "            return"),
     "            return",
     "tests/security/test_pool_desync.py tests/security/test_pool_lifecycle.py"),
    ("pool: close leaves waiters waiting",
     "src/labgate/providers/pool.py",
     ("        while self._waiters:\n" "            waiter = self._waiters.popleft()\n"
      "            if not waiter.done():\n" "                waiter.set_exception("),
     ("        while False:\n" "            waiter = self._waiters.popleft()\n" "            if not waiter.done():\n"
      "                waiter.set_exception("),
     "tests/security/test_pool_lifecycle.py"),
    ("server: Upgrade no longer closes",
     "src/labgate/server/connection.py",
     "            self.stop_reading(None)  # no upgrades: answer the request, then close",
     "            pass  # no upgrades: answer the request, then close",
     "tests/security/test_server_http.py tests/unit/server/test_http.py"),
    ("server: malformed absolute-form accepted",
     "src/labgate/server/framing.py",
     '            raise RequestError(f"Malformed request target {url[:200]!r}.") from None',
     '            return "/", ""',
     "tests/security/test_server_http.py tests/unit/server/test_http.py"),
    ("reload: drain without a time limit",
     "src/labgate/config/reload.py",
     "await asyncio.wait(pending, timeout=timeout)",
     "await asyncio.wait(pending, timeout=None)",
     "tests/unit/config/test_reload.py"),
    ("reload: provider build failure crashes the reload",
     "src/labgate/config/reload.py",
     "            except Exception as exc:  # an adapter that refuses to build is a refusal too",
     "            except ZeroDivisionError as exc:  # an adapter that refuses to build is a refusal too",
     "tests/unit/config/test_reload.py"),
    ("admin: POST /admin/config/validate gone",
     "src/labgate/server/admin_config.py",
     'CONFIG + "/validate": {"POST": surface.validate},',
     "",
     "tests/contract/test_reload_process.py"),
    ("process: buffered at close not counted as dropped",
     "src/labgate/store/process.py",
     "        if self._buffer:\n" "            self._drop(len(self._buffer))\n" "            self._buffer = []",
     "        if self._buffer:\n" "            self._buffer = []",
     "tests/unit/store/test_process.py"),
    ("process: spawn failure not retried",
     "src/labgate/store/process.py",
     ('            log.error("history: cannot start the writer process: %s", exc)\n'
      "            self._restart_later()"),
     '            log.error("history: cannot start the writer process: %s", exc)',
     "tests/unit/store/test_process.py"),
    ("process: reader never reopened",
     "src/labgate/store/process.py",
     "                    said = cause\n" "                continue",
     "                    said = cause\n" "                return",
     "tests/unit/store/test_process.py"),
    ("process: reader reopen not scheduled",
     "src/labgate/store/process.py",
     "            self._reopen = self._loop.create_task(self._open_reader_later())",
     "            pass",
     "tests/unit/store/test_process.py"),
    ("process: unsendable values drop the frame",
     "src/labgate/store/process.py",
     "            data = marshal.dumps((frame[0], [_marshallable(w) for w in frame[1]]))",
     "            return",
     "tests/unit/store/test_process.py"),
    ("process: unsendable value drops the whole record",
     "src/labgate/store/process.py",
     "        return without_bodies(w)",
     "        return (w[0],) + (None,) * (len(w) - 1)",
     "tests/unit/store/test_process.py"),
    ("process: child exit during a flush leaves it waiting",
     "src/labgate/store/process.py",
     ("        for future in self._flushes.values():\n" "            if not future.done():\n"
      '                future.set_result(f"the writer process exited (code {code})")'),
     ("        for future in ():\n" "            if not future.done():\n"
      '                future.set_result(f"the writer process exited (code {code})")'),
     "tests/unit/store/test_process.py"),
    ("process: killed child's records not counted as dropped",
     "src/labgate/store/process.py",
     "        self._dropped += lost\n" "",
     "",
     "tests/unit/store/test_process.py"),
    ("writer: records lost at close not logged/counted",
     "src/labgate/store/writer.py",
     "                    lost = len(self._queue) + len(self._pending)\n" "",
     "                    lost = 0\n" "",
     "tests/unit/store/test_writer.py"),
    ("health: a failed probe reported reachable",
     "src/labgate/server/health.py",
     '            return {"status": "active", "reachable": False, "error": exc.message,',
     '            return {"status": "active", "reachable": None, "error": exc.message,',
     "tests/security/test_pool_health.py tests/unit/server/test_health.py"),
    ("health: all unreachable is only degraded",
     "src/labgate/server/health.py",
     'status = "down" if entries and unreachable == len(entries) else',
     'status = "degraded" if entries and unreachable == len(entries) else',
     "tests/security/test_pool_health.py tests/unit/server/test_health.py"),
    ("health: inactive providers probed as active",
     "src/labgate/server/health.py",
     '            if provider.status != "active":',
     "            if False:",
     "tests/security/test_pool_health.py tests/unit/server/test_health.py"),
    ("health: missing models not listed",
     "src/labgate/server/health.py",
     '"missing_models": [m for m in configured if m not in models]',
     '"missing_models": []',
     "tests/security/test_pool_health.py tests/unit/server/test_health.py"),
    ("health: probe results cached forever",
     "src/labgate/server/health.py",
     "time.monotonic() - probed[0] < _PROBE_CACHE_S",
     "time.monotonic() - probed[0] < 1e9",
     "tests/security/test_pool_health.py tests/unit/server/test_health.py"),
    ("health: history not checked by readiness",
     "src/labgate/server/health.py",
     'if not stats["ready"] or stats["last_error"] is not None:',
     "if False:",
     "tests/unit/server/test_health.py"),
]


def main(words: list[str]) -> int:
    survived = 0
    for name, path, old, new, tests in MUTANTS:
        if words and not any(word in name for word in words):
            continue
        module = ROOT / path
        source = module.read_text()
        assert source.count(old) == 1, f"{name}: the original text is no longer in {path} exactly once"
        module.write_text(source.replace(old, new))
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", *tests.split()],
                                  cwd=ROOT, capture_output=True, text=True, timeout=900)
        finally:
            module.write_text(source)
        last = [line for line in done.stdout.splitlines() if line.strip()][-1:]
        survived += done.returncode == 0
        print(f"{'SURVIVED' if done.returncode == 0 else 'KILLED  '} {name}: {last}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
