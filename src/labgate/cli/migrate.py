"""``labgate import litellm`` and ``labgate export litellm``: move between LiteLLM and labgate configs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from labgate.config.load import load_config
from labgate.config.migrate.litellm import Note
from labgate.config.problems import ConfigError

_HEADER = "# Converted by `labgate import litellm` from {source}. Review the notes it printed.\n"


def register(commands: Any) -> None:
    p = commands.add_parser("import", help="convert another gateway's config into labgate's files")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="FORMAT")
    litellm = kinds.add_parser("litellm", help="a LiteLLM proxy config.yaml")
    litellm.add_argument("file", help="the LiteLLM config.yaml")
    litellm.add_argument("--out", metavar="DIR", default=".", help="where to write labgate's files (default .)")
    litellm.add_argument("--force", action="store_true", help="overwrite files that exist")
    litellm.add_argument("--dry-run", action="store_true", help="print the files instead of writing them")
    litellm.add_argument("--json", action="store_true", help="print the report as JSON")
    litellm.set_defaults(run=run_import)

    p = commands.add_parser("export", help="write labgate's config in another gateway's format")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="FORMAT")
    litellm = kinds.add_parser("litellm", help="a LiteLLM proxy config.yaml")
    litellm.add_argument("--config", metavar="DIR", default=".", help="config directory or labgate.yaml")
    litellm.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    litellm.set_defaults(run=run_export)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110)


def run_import(args: argparse.Namespace) -> int:
    from labgate.config.migrate.from_litellm import import_litellm
    from labgate.config.reader import read_document

    source = Path(args.file)
    read = read_document(source)  # the same reader as labgate's own files: UTF-8, duplicate keys, lines
    if read.problems:
        print(f"labgate: cannot read {source}:", file=sys.stderr)
        for problem in read.problems:
            print(problem, file=sys.stderr)
        return 1
    doc = read.data if read.data is not None else {}
    if not isinstance(doc, dict):
        print(f"labgate: {source}: the top level must be a mapping", file=sys.stderr)
        return 1
    result = import_litellm(doc)
    out = Path(args.out)
    texts = {name: _HEADER.format(source=source.name) + _dump(body) for name, body in result.files.items()}
    if args.dry_run:
        for name, text in texts.items():
            print(f"--- {out / name}\n{text}")
        valid = True
    else:
        existing = [out / n for n in texts if (out / n).exists()]
        if existing and not args.force:
            print(f"labgate: {', '.join(map(str, existing))} exist; pass --force to overwrite", file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (out / name).write_text(text, encoding="utf-8")
        valid = _check(out, result.notes)
    _report(result.notes, as_json=args.json, written=[] if args.dry_run else [str(out / n) for n in texts])
    return 0 if valid else 1


def _check(out: Path, notes: list[Note]) -> bool:
    """The written files must load; an unset ``${VAR}`` is only reported (it is set where the gateway runs)."""
    try:
        load_config(out, env=_AnyEnv())
    except ConfigError as exc:
        print(f"labgate: the converted config does not validate:\n{exc}", file=sys.stderr)
        return False
    return True


class _AnyEnv(dict[str, str]):
    """Every ``${VAR}`` counts as set while checking a converted config."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return "http://127.0.0.1:1" if "URL" in key or "BASE" in key or "HOST" in key else "set"


def _report(notes: list[Note], *, as_json: bool, written: list[str]) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps({"written": written, "notes": [n.as_dict() for n in notes]},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for path in written:
        print(f"wrote {path}")
    unmapped = [n for n in notes if n.level == "unmapped"]
    for note in notes:
        print(note)
    print(f"{len(notes)} note(s), {len(unmapped)} setting(s) not carried over")


def run_export(args: argparse.Namespace) -> int:
    from labgate.config.load import read_raw
    from labgate.config.migrate.to_litellm import export_litellm
    from labgate.config.variables import References

    try:
        config = load_config(args.config)
        written = read_raw(Path(args.config), env=References(os.environ)).parts
    except ConfigError as exc:
        print(f"labgate: the config is invalid:\n{exc}", file=sys.stderr)
        return 1
    doc, notes = export_litellm(config, written=written)
    text = f"# Exported by `labgate export litellm` from {config.source}.\n" + _dump(doc)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for note in notes:
        print(note, file=sys.stderr)
    return 0
