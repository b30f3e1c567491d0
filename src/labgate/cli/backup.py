"""``labgate backup list|create|verify|restore``: the timestamped copies of a config directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from labgate.cli.style import shown
from labgate.config import backup as backups
from labgate.config.problems import ConfigError


def register(commands: Any) -> None:
    p = commands.add_parser("backup", help="list, make, verify or restore config backups")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="DIR", default=".", help="config directory or labgate.yaml")
    common.add_argument("--backup-dir", metavar="DIR",
                        help="where backups are (default: config.backup_dir of gateway.yaml, else DIR/backups)")
    a = actions.add_parser("list", parents=[common], help="every backup, newest first")
    a.add_argument("--json", action="store_true")
    a.set_defaults(run=run_list)
    a = actions.add_parser("create", parents=[common], help="back up the config now (then rotate)")
    a.add_argument("--reason", default="manual")
    a.set_defaults(run=run_create)
    a = actions.add_parser("verify", parents=[common], help="check a backup's checksums and that it validates")
    a.add_argument("name", nargs="?", help="backup name, name prefix or config version (default: all)")
    a.set_defaults(run=run_verify)
    a = actions.add_parser("restore", parents=[common], help="put a backup's files back in the config directory")
    a.add_argument("name", help="backup name, name prefix or config version")
    a.add_argument("--force", action="store_true", help="restore even if the backup does not verify")
    a.set_defaults(run=run_restore)


def backup_dir(args: argparse.Namespace) -> Path:
    """``--backup-dir``, else ``config.backup_dir`` from gateway.yaml (if it loads), else ``backups``."""
    if args.backup_dir:
        return Path(args.backup_dir)
    config_path = Path(args.config)
    setting = "backups"
    try:
        from labgate.config.load import load_config

        setting = load_config(config_path).gateway.config.backup_dir
    except ConfigError:
        pass
    return backups.default_dir(config_path, setting)


def run_list(args: argparse.Namespace) -> int:
    found = backups.list_backups(backup_dir(args))
    if args.json:
        sys.stdout.write(orjson.dumps([b.as_dict() for b in found], option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not found:
        print(f"no backups in {backup_dir(args)}")
        return 0
    for b in found:
        print(f"{shown(b.name):<22} {shown(b.version):<24} {b.created:%Y-%m-%d %H:%M:%S} UTC  {shown(b.reason)}")
    print(f"{len(found)} backup(s) in {backup_dir(args)}")
    return 0


def run_create(args: argparse.Namespace) -> int:
    try:
        made = backups.create(Path(args.config), backup_dir(args), reason=args.reason)
    except FileNotFoundError as exc:
        print(f"labgate: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {args.config} as {made.path} ({made.version})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    directory = backup_dir(args)
    if args.name:
        found = backups.find(directory, args.name)
        if found is None:
            print(f"labgate: no backup {args.name!r} in {directory}", file=sys.stderr)
            return 1
        targets = [found]
    else:
        targets = backups.list_backups(directory)
    failed = 0
    for b in targets:
        problems = backups.verify(b)
        failed += bool(problems)
        print(f"{b.name}: {'ok' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"  {problem}")
    print(f"{len(targets)} backup(s) checked, {failed} failed")
    return 1 if failed else 0


def run_restore(args: argparse.Namespace) -> int:
    directory = backup_dir(args)
    found = backups.find(directory, args.name)
    if found is None:
        print(f"labgate: no backup {args.name!r} in {directory}", file=sys.stderr)
        return 1
    problems = backups.verify(found)
    if problems and not args.force:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"labgate: backup {found.name} does not verify; not restored (--force restores anyway)",
              file=sys.stderr)
        return 1
    config_path = Path(args.config)
    if backups.config_files(config_path):
        saved = backups.ensure(config_path, directory, reason=f"before restoring {found.name}")
        print(f"the current config is kept as backup {saved.name} ({saved.version})")
    backups.restore(found, config_path)
    print(f"restored {found.name} ({found.version}) into {config_path}; "
          f"apply it with: labgate reload --config {config_path}")
    return 0
