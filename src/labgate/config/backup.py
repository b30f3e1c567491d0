"""Timestamped config backups with rotation: the last 10, one a day for 7 days, one a week for 4 weeks.

A backup is a directory ``<backup_dir>/<UTC timestamp>/`` holding copies of
the config files and a ``manifest.json`` (when, from where, why, the config
version, a SHA-256 per file). A backup directory is itself a config
directory, so verifying one is loading it.

The *version* of a config is a digest of its files' bytes: the gateway
reports the version it runs (``GET /admin/config``), and ``labgate reload``
finds the backup to roll back to by that version.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from labgate.config.load import FILES, SINGLE_FILE
from labgate.config.problems import Problem

MANIFEST = "manifest.json"
KEEP_LAST, KEEP_DAILY, KEEP_WEEKLY = 10, 7, 4
_STAMP = "%Y%m%dT%H%M%SZ"
CONFIG_NAMES = (*FILES.values(), SINGLE_FILE)


def config_files(path: Path) -> list[Path]:
    """The files that make up the config at ``path`` (a directory or a single YAML file)."""
    if path.is_file():
        return [path]
    return [path / name for name in CONFIG_NAMES if (path / name).is_file()]


def version_of(files: dict[str, bytes]) -> str:
    """The version of a config: a digest of its file names and bytes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return "sha256:" + digest.hexdigest()[:16]


def read_files(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in config_files(path)}


def default_dir(config_path: Path, setting: str = "backups") -> Path:
    """Where backups of the config at ``config_path`` go (``config.backup_dir``, relative to its directory)."""
    base = config_path if config_path.is_dir() else config_path.parent
    return base / setting


@dataclass(frozen=True, slots=True)
class Backup:
    path: Path
    created: datetime
    version: str
    reason: str
    source: str
    files: dict[str, str]  # name → sha256

    @property
    def name(self) -> str:
        return self.path.name

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "created": self.created.isoformat(), "version": self.version,
                "reason": self.reason, "source": self.source, "files": sorted(self.files)}


def create(config_path: Path, backup_dir: Path, *, reason: str, now: datetime | None = None,
           files: dict[str, bytes] | None = None, rotate_after: bool = True) -> Backup:
    """Copy the config files into a new timestamped backup (then rotate, unless told not to)."""
    now = now or datetime.now(UTC)
    files = read_files(config_path) if files is None else files
    if not files:
        raise FileNotFoundError(f"no config files at {config_path}")
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime(_STAMP)
    target = backup_dir / stamp
    n = 1
    while True:
        try:
            target.mkdir()
            break
        except FileExistsError:
            n += 1
            target = backup_dir / f"{stamp}-{n}"
    for name, data in files.items():
        (target / name).write_bytes(data)
    manifest = {"created": now.isoformat(), "version": version_of(files), "reason": reason,
                "source": str(config_path), "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    (target / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if rotate_after:
        rotate(backup_dir, now=now)
    return _read(target)  # type: ignore[return-value]


def ensure(config_path: Path, backup_dir: Path, *, reason: str, files: dict[str, bytes] | None = None,
           now: datetime | None = None) -> Backup:
    """A backup of this exact config: the newest one with its version, or a new one."""
    files = read_files(config_path) if files is None else files
    version = version_of(files)
    for backup in list_backups(backup_dir):
        if backup.version == version:
            return backup
    return create(config_path, backup_dir, reason=reason, files=files, now=now)


def _read(path: Path) -> Backup | None:
    try:
        doc = orjson.loads((path / MANIFEST).read_bytes())
        return Backup(path, datetime.fromisoformat(doc["created"]), str(doc["version"]), str(doc.get("reason", "")),
                      str(doc.get("source", "")), dict(doc.get("files", {})))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_backups(backup_dir: Path) -> list[Backup]:
    """Every readable backup, newest first."""
    if not backup_dir.is_dir():
        return []
    found = [b for p in backup_dir.iterdir() if p.is_dir() and (b := _read(p)) is not None]
    return sorted(found, key=lambda b: (b.created, b.name), reverse=True)


def find(backup_dir: Path, name: str) -> Backup | None:
    """A backup by directory name, by unique name prefix, or by config version."""
    backups = list_backups(backup_dir)
    exact = [b for b in backups if b.name == name or b.version == name]
    if exact:
        return exact[0]
    prefixed = [b for b in backups if b.name.startswith(name)]
    return prefixed[0] if len(prefixed) == 1 else None


def verify(backup: Backup) -> list[Problem]:
    """Checksums match, every file is there, and the backup loads as a valid config."""
    from labgate.config.load import load_config
    from labgate.config.problems import ConfigError

    problems = []
    for name, expected in sorted(backup.files.items()):
        file = backup.path / name
        try:
            actual = hashlib.sha256(file.read_bytes()).hexdigest()
        except OSError:
            problems.append(Problem(str(file), "", "missing from the backup"))
            continue
        if actual != expected:
            problems.append(Problem(str(file), "", "changed since the backup was made (checksum mismatch)"))
    if problems:
        return problems
    try:
        load_config(backup.path)
    except ConfigError as exc:
        return [p for p in exc.problems if p.severity == "error"]
    return []


def restore(backup: Backup, config_path: Path) -> None:
    """Put the backup's files in place (each replaced atomically); config files it lacks are removed."""
    target = config_path if config_path.is_dir() or not config_path.suffix else config_path.parent
    target.mkdir(parents=True, exist_ok=True)
    for name in backup.files:
        tmp = target / f".{name}.restoring"
        shutil.copyfile(backup.path / name, tmp)
        os.replace(tmp, target / name)
    for name in CONFIG_NAMES:
        if name not in backup.files:
            with contextlib.suppress(FileNotFoundError):
                (target / name).unlink()


def keep(created: Iterable[datetime], *, now: datetime, last: int = KEEP_LAST, daily: int = KEEP_DAILY,
         weekly: int = KEEP_WEEKLY) -> set[datetime]:
    """Which backups rotation keeps: the ``last`` newest, plus the newest of each of the last ``daily``
    days and of each of the last ``weekly`` ISO weeks (UTC)."""
    ordered = sorted(created, reverse=True)
    kept = set(ordered[:last])
    days: set[Any] = set()
    weeks: set[Any] = set()
    today = now.astimezone(UTC).date()
    this_week = today - timedelta(days=today.weekday())
    for when in ordered:
        day = when.astimezone(UTC).date()
        week = day - timedelta(days=day.weekday())
        if (today - day).days < daily and day not in days:
            days.add(day)
            kept.add(when)
        if (this_week - week).days // 7 < weekly and week not in weeks:
            weeks.add(week)
            kept.add(when)
    return kept


def rotate(backup_dir: Path, *, now: datetime | None = None) -> list[Backup]:
    """Delete the backups rotation does not keep; returns what was deleted."""
    backups = list_backups(backup_dir)
    kept = keep((b.created for b in backups), now=now or datetime.now(UTC))
    removed = [b for b in backups if b.created not in kept]
    for backup in removed:
        shutil.rmtree(backup.path, ignore_errors=True)
    return removed
