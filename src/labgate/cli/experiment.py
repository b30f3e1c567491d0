"""``labgate experiment``: list, inspect, analyse, export, start, pause and stop A/B experiments.

The experiments come from ``experiments.yaml`` in ``--config DIR``; their
records from the history store that config names (``store.url``; ``--store URL``
overrides it). ``start``/``pause``/``stop`` ask the running gateway
(``POST /admin/experiments/NAME/ACTION``: it edits ``status`` in
experiments.yaml and reloads); ``--offline`` edits the file only, for a gateway
that is not running. docs/experiments.md explains the report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
from pathlib import Path
from typing import IO, Any

import orjson

from labgate.cli.style import shown
from labgate.config.problems import ConfigError
from labgate.config.schema.experiments import ExperimentConfig
from labgate.store import is_postgres, resolve_url, store_for

ACTIONS = {"start": "running", "pause": "paused", "stop": "stopped"}


class ExperimentCommandError(Exception):
    """A problem to report on stderr with exit status 1."""


def register(commands: Any) -> None:
    p = commands.add_parser("experiment", help="A/B experiments: list, status, analyze, export, start|pause|stop")
    sub = p.add_subparsers(dest="experiment_command", required=True, metavar="SUBCOMMAND")
    listing = sub.add_parser("list", help="every experiment in experiments.yaml, with requests per variant")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_run(_list))
    status = sub.add_parser("status", help="one experiment's config and traffic")
    _common(status, name=True)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_run(_status))
    analyze = sub.add_parser("analyze", help="metrics per variant, differences with always-valid intervals, "
                                             "the verdict")
    _common(analyze, name=True, window=True)
    analyze.add_argument("--json", action="store_true", help="print the whole report as JSON")
    analyze.set_defaults(run=_run(_analyze))
    export = sub.add_parser("export", help="the report as JSON, or its comparisons as CSV")
    _common(export, name=True, window=True)
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(run=_run(_export))
    for action, meaning in (("start", "status: running"), ("pause", "status: paused (no new enrolments)"),
                            ("stop", "status: stopped")):
        change = sub.add_parser(action, help=f"set {meaning} in experiments.yaml and reload the gateway")
        change.add_argument("name", help="the experiment's name")
        change.add_argument("--config", metavar="DIR", default=".", help="the config directory (default .)")
        change.add_argument("--url", help="the gateway (default: server.host/port of gateway.yaml)")
        change.add_argument("--key-env", metavar="VAR", help="variable holding the master key "
                                                             "(default: auth.master_key_env)")
        change.add_argument("--offline", action="store_true", help="edit experiments.yaml only (no gateway running)")
        change.set_defaults(run=_change, action=action)


def _common(p: argparse.ArgumentParser, *, name: bool = False, window: bool = False) -> None:
    if name:
        p.add_argument("name", help="the experiment's name")
    p.add_argument("--config", metavar="DIR", default=".", help="config directory or labgate.yaml (default .)")
    p.add_argument("--store", metavar="URL", help="the history store (default: store.url of --config)")
    if window:
        p.add_argument("--since", help="ISO 8601, Unix seconds, or an age (2h, 7d)")
        p.add_argument("--until", help="ISO 8601, Unix seconds, or an age")


def _run(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from labgate.config.load import load_config

        try:
            config = load_config(args.config)
            url = resolve_url(args.store) if args.store else resolve_url(config.gateway.store.url,
                                                                        source=config.source)
            recorded = is_postgres(url) or Path(url).exists()
            return asyncio.run(_with_store(url if recorded else None, args, config, command))
        except (ExperimentCommandError, ValueError) as exc:
            print(f"labgate experiment: {exc}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            print(f"labgate experiment: the config is invalid:\n{exc}", file=sys.stderr)
            return 1
    return run


async def _with_store(url: str | None, args: argparse.Namespace, config: Any, command: Any) -> int:
    if url is None:  # nothing recorded yet: the report shows empty variants
        return int(await command(args, config, None, sys.stdout))
    store = store_for(url)
    try:
        await store.open()
    except Exception as exc:
        raise ExperimentCommandError(f"cannot open the history store {store.display_url}: {exc}") from None
    try:
        return int(await command(args, config, store, sys.stdout))
    finally:
        await store.aclose()


def _find(config: Any, name: str) -> ExperimentConfig:
    from labgate.config.problems import closest

    names = [e.name for e in config.experiments.experiments]
    for experiment in config.experiments.experiments:
        if experiment.name == name:
            return experiment
    hint = closest(name, names, n=1)
    raise ExperimentCommandError(f"no experiment named {name!r} in experiments.yaml"
                                 + (f" (did you mean `{hint[0]}`?)" if hint else ""))


async def _counts(store: Any) -> dict[str, dict[str, int]]:
    from labgate.server.admin_experiments import variant_counts

    return {} if store is None else await variant_counts(store)


def _describe(e: ExperimentConfig, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {**e.model_dump(mode="json"), "control": e.control_name, "requests": counts.get(e.name, {})}


async def _list(args: argparse.Namespace, config: Any, store: Any, out: IO[str]) -> int:
    counts = await _counts(store)
    rows = [_describe(e, counts) for e in config.experiments.experiments]
    if args.json:
        out.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not rows:
        print("no experiments in experiments.yaml", file=sys.stderr)
        return 0
    for row in rows:
        split = ", ".join(f"{v['name']} {v['weight']:g} ({row['requests'].get(v['name'], 0)} requests)"
                          for v in row["variants"])
        out.write(f"{shown(row['name']):24} {row['status']:8} {shown(split)}\n")
    return 0


async def _status(args: argparse.Namespace, config: Any, store: Any, out: IO[str]) -> int:
    experiment = _find(config, args.name)
    row = _describe(experiment, await _counts(store))
    if args.json:
        out.write(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    start, end = experiment.window()
    out.write(f"{shown(experiment.name)}: {experiment.status}; unit {experiment.unit}; applies to "
              f"{', '.join(experiment.covers)}; primary metric {experiment.primary}\n")
    if experiment.description:
        out.write(f"  {shown(experiment.description)}\n")
    if start or end:
        out.write(f"  window {experiment.start_date or '-'} … {experiment.end_date or '-'}\n")
    for v in experiment.variants:
        target = v.model or "(the requested model)"
        out.write(f"  {shown(v.name):16} weight {v.weight:g} → {shown(target)}  "
                  f"{row['requests'].get(v.name, 0)} requests\n")
    return 0


async def _report(args: argparse.Namespace, config: Any, store: Any) -> dict[str, Any]:
    from labgate.analysis.experiment import Observations, analyze, observations
    from labgate.store.query import parse_time

    experiment = _find(config, args.name)
    if store is None:
        return analyze(experiment, {v.name: Observations() for v in experiment.variants})
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    observed, truncated = await observations(store, experiment.name, since=since, until=until)
    return analyze(experiment, observed, truncated=truncated)


async def _analyze(args: argparse.Namespace, config: Any, store: Any, out: IO[str]) -> int:
    report = await _report(args, config, store)
    if args.json:
        out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    out.write(f"experiment {shown(report['experiment'])} ({report['status']}), control "
              f"{shown(report['control'])}, α={report['alpha']:g}\n\n")
    header = ("VARIANT", "REQUESTS", "ERRORS", "P50 MS", "P95 MS", "TTFT P50", "TOK/S", "COST/REQ", "SCORE",
              "THUMBS UP")
    table = [header] + [(shown(v["variant"]), str(v["requests"]), _pct(v["error_rate"]), _n(v["latency_p50_ms"]),
                         _n(v["latency_p95_ms"]), _n(v["ttft_p50_ms"]), _n(v["tokens_per_second"], 1),
                         _n(v["cost_per_request"], 6), _n(v["mean_score"], 2), _pct(v["thumbs_up_rate"]))
                        for v in report["variants"]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    out.write("\n")
    for c in report["comparisons"]:
        if c["metric"] in report["metrics"]:
            extra = f"  (p always-valid {_n(c['p_always_valid'], 4)}, fixed-horizon p {_n(c['p_fixed'], 4)}, " \
                    f"power {_pct(c['power'])})"
            out.write(f"{shown(c['verdict'])}{extra}\n")
    for p95 in report["latency_p95"]:
        lo, hi = p95["interval"]
        out.write(f"p95 latency of {shown(p95['variant'])}: {_signed(p95['ratio'])} vs control "
                  f"(bootstrap {100 * (1 - report['alpha']):g}% CI {_signed(lo)} to {_signed(hi)}, fixed horizon)\n")
    thompson = report["thompson"]
    if thompson.get("ready"):
        best = ", ".join(f"{shown(k)} {_pct(v)}" for k, v in thompson["p_best"].items())
        out.write(f"P(best) on {thompson['metric']}: {best}" + ("; stopping rule met" if thompson["stop"] else "")
                  + "\n")
    if report["truncated"]:
        out.write("(only the newest records were analysed: see docs/experiments.md)\n")
    out.write(f"\nverdict: {shown(report['verdict'])}\n")
    return 0


async def _export(args: argparse.Namespace, config: Any, store: Any, out: IO[str]) -> int:
    from labgate.server.admin_experiments import report_csv

    report = await _report(args, config, store)
    data = report_csv(report) if args.format == "csv" else orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n"
    if args.output:
        await asyncio.to_thread(Path(args.output).write_bytes, data)
    else:
        out.write(data.decode())
    return 0


def _change(args: argparse.Namespace) -> int:
    from labgate.cli.reload import GatewayClient, _default_url, _key
    from labgate.config.load import load_config

    try:
        config = load_config(args.config)
        _find(config, args.name)
        if args.offline:
            from labgate.config.edit import set_status

            before = set_status(Path(args.config), args.name, ACTIONS[args.action])
            print(f"{args.name}: {before} → {ACTIONS[args.action]} (experiments.yaml; a running gateway applies "
                  "it at its next reload)")
            return 0
        client = GatewayClient(args.url or _default_url(config), _key(args, config), 30.0)
        try:
            status, body = client.call("POST", f"/admin/experiments/{args.name}/{args.action}")
        except (urllib.error.URLError, OSError) as exc:
            raise ExperimentCommandError(f"cannot reach the gateway at {client.url} ({exc}); "
                                         "use --offline to edit experiments.yaml only") from None
        if status != 200:
            message = body.get("error", {}).get("message") if isinstance(body, dict) else body
            raise ExperimentCommandError(f"the gateway answered {status}: {message}")
        print(f"{args.name}: {body['was']} → {body['status']} (reload: {body['reload']['status']})")
        return 0
    except ExperimentCommandError as exc:
        print(f"labgate experiment: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"labgate experiment: {exc}", file=sys.stderr)
        return 1


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%".replace("-", "−")
