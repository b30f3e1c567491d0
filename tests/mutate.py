"""Mutation testing, one module at a time (``make mutate MODULE=providers/pool.py``; docs/testing.md).

mutmut 3 mutates every function of the module and runs, for each mutant, only the tests that
called the mutated function. A whole-suite run is hours on a small machine, so each module is
paired here with the test files written for it, and the run happens in a scratch directory
(``.mutate/<module>/``: a pyproject.toml with that module's ``[tool.mutmut]`` section, and
symlinks to ``src`` and ``tests``), so runs of different modules neither share nor clobber
mutmut's ``mutants/`` state. A second run of a module only re-tests what changed.

Tests that start ``labgate serve`` as a child process import the unmutated source (the child
does not inherit mutmut's import path): the mutants of code that only such children run are
reported as surviving or as "no tests", never as killed by them.

    python tests/mutate.py providers/pool.py          # run, then print the survivors
    python tests/mutate.py --list                     # the modules and their test files
    python tests/mutate.py --again providers/pool.py  # after adding tests: re-test the survivors
    python tests/mutate.py server/connection.py --only '*x__respond*'  # only these mutants (fnmatch)

mutmut keeps a verdict once given: a plain second run re-tests only mutants of functions whose code
changed, and selects the tests to run from its stats (which tests call which function), collected
once. ``--again`` copies the paired test files into the scratch copy (``mutants/tests/``), drops the
stats so they are collected again with the new tests, and names every mutant that survived or had no
tests, which makes mutmut test those again.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module (under src/labgate/) -> the test files that are meant to kill its mutants
MODULES: dict[str, list[str]] = {
    # test_provider_limits.py: an in-process gateway over simulators, the only caller of _limited/_free/planned
    "routing/attempts.py": ["tests/unit/routing/test_attempts.py", "tests/unit/routing/test_rescue.py",
                            "tests/unit/routing/test_provider_limits.py"],
    "routing/balancer.py": ["tests/unit/routing/test_balancer.py", "tests/unit/routing/test_local_first.py"],
    "routing/circuit.py": ["tests/unit/routing/test_circuit.py"],
    "routing/gate.py": ["tests/unit/routing/test_gate.py"],
    "routing/queue.py": ["tests/unit/routing/test_gate.py", "tests/unit/routing/test_queue_priority.py",
                         "tests/unit/routing/test_queue_wait.py", "tests/security/test_traffic_queue.py"],
    "routing/pace.py": ["tests/unit/routing/test_pace.py", "tests/contract/test_stream_deadlines.py"],
    "routing/engines.py": ["tests/unit/routing/test_engines.py", "tests/unit/routing/test_engine_load.py"],
    "routing/experiments.py": ["tests/unit/routing/test_experiments.py"],
    # Redis (REDIS_URL): test_capacity_replicas.py's replicas are child processes; its in-process tests and
    # test_leases_redis.py are the ones that reach leases.py under mutmut
    "routing/leases.py": ["tests/integration/test_capacity_replicas.py", "tests/integration/test_leases_redis.py"],
    "routing/rescue.py": ["tests/unit/routing/test_rescue.py", "tests/contract/test_rescue_messages.py"],
    "routing/table.py": ["tests/unit/routing/test_table.py", "tests/unit/routing/test_local_first.py"],
    # without test_pool_properties.py (hypothesis over response framing: connection.py's, ~11 s a run)
    "providers/pool.py": ["tests/security/test_pool_lifecycle.py", "tests/security/test_pool_limits.py",
                          "tests/security/test_pool_desync.py", "tests/security/test_pool_health.py",
                          "tests/security/test_pool_redaction.py", "tests/unit/providers/test_http.py",
                          "tests/unit/providers/test_pool.py"],
    # test_connection.py: the limits at their exact edges, the connection driven by hand (labgate.testing.scripted)
    "providers/connection.py": ["tests/unit/providers/test_connection.py", "tests/security/test_pool_*.py",
                                "tests/unit/providers/test_http.py", "tests/unit/providers/test_pool.py"],
    "providers/http.py": ["tests/unit/providers/test_http.py", "tests/unit/providers/test_status_mapping.py"],
    # server: the hypothesis properties (test_server_properties.py, ~8 s and a fresh seed each run) are
    # left out of connection.py's and http.py's runs, whose survivors would each pay the whole set
    "server/http.py": ["tests/unit/server/test_http.py", "tests/unit/server/test_limits.py",
                       "tests/security/test_server_http.py"],
    "server/connection.py": ["tests/unit/server/test_http.py", "tests/security/test_server_http.py",
                             "tests/security/test_server_memory.py"],
    "server/framing.py": ["tests/unit/server/test_framing.py", "tests/unit/server/test_http.py",
                          "tests/security/test_server_*.py"],
    # the admin config API (diff, changed_routes, describe), the audit trail of reloads, `labgate reload` in process;
    # test_budget_seed.py: a reload that adds a budget (the limiter's seed)
    "config/reload.py": ["tests/unit/config/test_reload.py", "tests/unit/server/test_admin_config.py",
                         "tests/unit/server/test_admin_audit_reloads.py", "tests/security/test_config_entrypoints.py",
                         "tests/unit/state/test_budget_seed.py"],
    "store/process.py": ["tests/unit/store/test_process.py"],
    "store/writer.py": ["tests/unit/store/test_writer.py"],
    "server/health.py": ["tests/unit/server/test_health.py", "tests/security/test_pool_health.py"],
}


def scratch_for(module: str) -> Path:
    return ROOT / ".mutate" / module.replace("/", "-").removesuffix(".py")


def prepare(module: str) -> Path:
    """The scratch directory of one module's run: pyproject.toml with its mutmut section, src and tests."""
    tests = sorted({path for pattern in MODULES[module] for path in glob.glob(pattern, root_dir=ROOT)})
    if not tests:
        raise SystemExit(f"no test file matches {MODULES[module]}")
    scratch = scratch_for(module)
    scratch.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        link = scratch / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name)
    section = "\n".join([
        "", "[tool.mutmut]",
        'source_paths = ["src"]',  # the whole package is copied; only this module is mutated
        f"only_mutate = [{json.dumps('src/labgate/' + module)}]",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        # one worker: the tests run real sockets and child processes, and the machine is shared
        'pytest_add_cli_args = ["-p", "no:randomly", "-q", "-x", "--timeout", "120"]',
        "",
    ])
    (scratch / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + section)
    return scratch


def again(module: str, scratch: Path) -> list[str]:
    """Prepare a re-test of the mutants that were not killed: fresh test copies, fresh stats; their names."""
    for pattern in MODULES[module]:
        for path in glob.glob(pattern, root_dir=ROOT):
            shutil.copyfile(ROOT / path, scratch / "mutants" / path)
    (scratch / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    outcomes = survivors(scratch)
    return [name for status in ("survived", "no tests") for name in outcomes.get(status, [])]


def survivors(scratch: Path) -> dict[str, list[str]]:
    """Every mutant's outcome, as `mutmut results --all true` prints it."""
    out = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "results", "--all", "true"],
                         cwd=scratch, capture_output=True, text=True, check=True).stdout
    outcomes: dict[str, list[str]] = {}
    for line in out.splitlines():
        match = re.match(r"\s*(\S+): (.+)$", line)
        if match:
            outcomes.setdefault(match[2].strip(), []).append(match[1])
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", nargs="?", help="a module under src/labgate/, e.g. providers/pool.py")
    parser.add_argument("--list", action="store_true", help="the modules and their test files")
    parser.add_argument("--again", action="store_true",
                        help="re-test the survivors and 'no tests' of the last run, with the current tests")
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--only", nargs="+", default=[], metavar="PATTERN",
                        help="test only the mutants whose names match (fnmatch, e.g. '*x__respond__mutmut_*')")
    args = parser.parse_args()
    if args.list or not args.module:
        for module, tests in MODULES.items():
            print(f"{module:24} {' '.join(tests)}")
        return 0
    if args.module not in MODULES:
        raise SystemExit(f"unknown module {args.module!r}; `--list` shows the known ones")
    scratch = prepare(args.module)
    retest = again(args.module, scratch) if args.again else []
    if args.only:
        retest = [name for name in retest if any(fnmatch.fnmatch(name, p) for p in args.only)] if args.again \
            else list(args.only)
    if (args.again or args.only) and not retest:
        print(f"{args.module}: nothing left to re-test")
        return 0
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    run = [mutmut, "run", "--max-children", str(args.children), *retest]
    code = subprocess.run(run, cwd=scratch, env=env).returncode
    outcomes = survivors(scratch)
    print(f"\n{args.module}: " + ", ".join(f"{len(names)} {status}" for status, names in sorted(outcomes.items())))
    for status in ("survived", "no tests", "timeout", "suspicious"):
        for name in outcomes.get(status, []):
            print(f"  {status}: {name}   (mutmut show {name}, in {scratch.relative_to(ROOT)})")
    return code


if __name__ == "__main__":
    sys.exit(main())
