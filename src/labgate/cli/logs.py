"""``labgate logs``: follow and analyse the JSON request log (docs/observability.md#the-request-log).

    labgate serve > requests.log            # the request log is stdout
    labgate logs tail requests.log --errors --model m1
    labgate logs analyze requests.log       # or: ... | labgate logs analyze -

``tail`` prints matching lines as they are written (pretty by default, ``--json`` as they
are); ``analyze`` reads a whole log and reports errors by cause, the slowest requests,
latency percentiles and usage by model and provider. Lines that are not request records
(the banner, operational log lines, broken JSON) are skipped and counted.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from labgate.cli.style import Style, shown

POLL_S = 0.25  # how often ``tail`` looks for new lines
MAX_LINE_BYTES = 1024 * 1024  # a longer line is not a request record: skipped
SLOWEST = 10  # requests listed by ``analyze``
PERCENTILES = (50, 90, 95, 99)


def register(commands: Any) -> None:
    p = commands.add_parser("logs", help="follow or analyse the JSON request log")
    sub = p.add_subparsers(dest="logs_command", required=True, metavar="SUBCOMMAND")
    tail = sub.add_parser("tail", help="follow the request log, filtered")
    tail.add_argument("file", nargs="?", default="-", help="the log file (default: stdin)")
    _filters(tail)
    tail.add_argument("--json", action="store_true", help="print matching lines as JSON, unchanged")
    tail.add_argument("--no-follow", action="store_true", help="stop at the end of the file")
    tail.add_argument("--lines", "-n", type=int, default=10,
                      help="start with the last N lines of a file (default 10; 0: only new lines)")
    tail.set_defaults(run=_tail)
    analyze = sub.add_parser("analyze", help="errors, slow requests, latency percentiles, usage")
    analyze.add_argument("file", help="the log file, or - for stdin")
    _filters(analyze)
    analyze.add_argument("--json", action="store_true", help="print the report as JSON")
    analyze.set_defaults(run=_analyze)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="only requests for this model")
    p.add_argument("--provider", help="only requests served (or failed) by this provider")
    p.add_argument("--errors", action="store_true", help="only requests that did not end ok")
    p.add_argument("--slow", type=float, metavar="MS", help="only requests that took at least MS milliseconds")


# --- reading ------------------------------------------------------------------------------


class Reader:
    """Request records from lines; counts the lines that are not records."""

    def __init__(self) -> None:
        self.skipped = 0

    def records(self, lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
        for line in lines:
            record = self.parse(line)
            if record is not None:
                yield record

    def parse(self, line: bytes) -> dict[str, Any] | None:
        line = line.strip()
        if not line:
            return None
        try:
            record = orjson.loads(line) if len(line) <= MAX_LINE_BYTES else None
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "request_id" not in record or "latency_ms" not in record:
            self.skipped += 1
            return None
        return record


def matches(record: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.model is not None and record.get("model") != args.model:
        return False
    if args.provider is not None and record.get("provider") != args.provider:
        return False
    if args.errors and record.get("outcome") == "ok":
        return False
    return not (args.slow is not None and _number(record.get("latency_ms")) < args.slow)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


# --- tail ---------------------------------------------------------------------------------


def _tail(args: argparse.Namespace) -> int:
    out, reader = sys.stdout, Reader()
    style = Style.for_stream(out)
    try:
        for record in reader.records(_follow(args)):
            if matches(record, args):
                out.write(orjson.dumps(record).decode() + "\n" if args.json else pretty(record, style) + "\n")
                out.flush()
    except KeyboardInterrupt:
        pass
    except FileNotFoundError as exc:
        print(f"labgate logs: {exc.filename}: no such file", file=sys.stderr)
        return 1
    return 0


def _follow(args: argparse.Namespace) -> Iterator[bytes]:
    if args.file == "-":
        yield from sys.stdin.buffer
        return
    with Path(args.file).open("rb") as stream:
        yield from _last_lines(stream, args.lines)
        while True:
            line = stream.readline()
            if line.endswith(b"\n"):
                yield line
            elif args.no_follow:
                if line:
                    yield line
                return
            else:  # a partial line: wait for the rest
                stream.seek(-len(line), 1)
                time.sleep(POLL_S)


def _last_lines(stream: IO[bytes], count: int) -> list[bytes]:
    """The last ``count`` whole lines; leaves the stream after them."""
    lines = stream.readlines()
    if lines and not lines[-1].endswith(b"\n"):  # being written: read it again when whole
        stream.seek(-len(lines.pop()), 1)
    return lines[-count:] if count > 0 else []


def pretty(record: dict[str, Any], style: Style) -> str:
    """One line: time, status, model → deployment, latency, first token, tokens, attempts, error."""
    ts = time.strftime("%H:%M:%S", time.localtime(_number(record.get("ts"))))
    status = record.get("status")
    paint = style.green if record.get("outcome") == "ok" else style.red
    model = shown(str(record.get("model")))
    route = f"{model} → {shown(str(record.get('deployment')))}" if record.get("deployment") else model
    parts = [ts, paint(str(status)), route, f"{_number(record.get('latency_ms')):.0f} ms"]
    if record.get("ttft_ms") is not None and record.get("stream"):
        parts.append(f"first token {_number(record['ttft_ms']):.0f} ms")
    if record.get("completion_tokens") is not None:
        parts.append(f"{record.get('prompt_tokens')}+{record['completion_tokens']} tok")
    if _number(record.get("attempts")) > 1:
        parts.append(style.yellow(f"{record['attempts']} attempts"))
    if record.get("error_type"):
        parts.append(style.red(shown(f"{record['error_type']}: {record.get('error') or ''}")))
    return "  ".join(parts)


# --- analyze ------------------------------------------------------------------------------


def analyze(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The report: counts, errors by cause, slowest requests, latency percentiles, usage."""
    total = ok = 0
    outcomes: dict[str, int] = {}
    errors: dict[str, int] = {}
    failed_attempts: dict[str, int] = {}
    latencies: dict[str, list[float]] = {"": []}
    ttfts: list[float] = []
    usage: dict[str, dict[str, int]] = {}
    slowest: list[tuple[float, str, str]] = []
    for r in records:
        total += 1
        outcome = str(r.get("outcome"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        ok += outcome == "ok"
        if outcome != "ok":
            cause = str(r.get("error_type") or outcome)
            errors[cause] = errors.get(cause, 0) + 1
        for failure in r.get("failed_attempts") or ():
            if isinstance(failure, dict):
                key = f"{failure.get('deployment')}: {failure.get('error')}"
                failed_attempts[key] = failed_attempts.get(key, 0) + 1
        latency = _number(r.get("latency_ms"))
        model = str(r.get("model"))
        latencies[""].append(latency)
        latencies.setdefault(model, []).append(latency)
        if r.get("stream") and r.get("ttft_ms") is not None:
            ttfts.append(_number(r["ttft_ms"]))
        slowest.append((latency, str(r.get("request_id")), model))
        key = f"{model} @ {r.get('provider')}"
        entry = usage.setdefault(key, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
        entry["requests"] += 1
        entry["prompt_tokens"] += int(_number(r.get("prompt_tokens")))
        entry["completion_tokens"] += int(_number(r.get("completion_tokens")))
    slowest.sort(key=lambda s: -s[0])
    return {
        "requests": total, "ok": ok, "outcomes": dict(sorted(outcomes.items())),
        "errors_by_cause": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failed_attempts": dict(sorted(failed_attempts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "latency_ms": {("all" if m == "" else m): percentiles(v) for m, v in sorted(latencies.items()) if v},
        "ttft_ms": percentiles(ttfts) if ttfts else None,
        "slowest": [{"request_id": rid, "model": m, "latency_ms": ms} for ms, rid, m in slowest[:SLOWEST]],
        "usage": dict(sorted(usage.items())),
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles (each one is a value that occurred), plus the count and mean."""
    ordered = sorted(values)
    out: dict[str, float] = {"count": len(ordered), "mean": round(sum(ordered) / len(ordered), 3)}
    for p in PERCENTILES:
        out[f"p{p}"] = ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]
    out["max"] = ordered[-1]
    return out


def _analyze(args: argparse.Namespace) -> int:
    reader = Reader()
    try:
        if args.file == "-":
            report = analyze(r for r in reader.records(sys.stdin.buffer) if matches(r, args))
        else:
            with Path(args.file).open("rb") as stream:
                report = analyze(r for r in reader.records(stream) if matches(r, args))
    except OSError as exc:
        print(f"labgate logs: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    report["skipped_lines"] = reader.skipped
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(text_report(report))
    return 0


def text_report(report: dict[str, Any]) -> str:
    lines = [f"{report['requests']} requests, {report['ok']} ok"
             f" ({report['skipped_lines']} other lines skipped)", ""]
    if report["errors_by_cause"]:
        lines.append("errors by cause:")
        lines += [f"  {count:6}  {shown(cause)}" for cause, count in report["errors_by_cause"].items()]
    if report["failed_attempts"]:
        lines.append("failed attempts (including those a fallback recovered):")
        lines += [f"  {count:6}  {shown(key)}" for key, count in report["failed_attempts"].items()]
    lines.append("latency (ms):" + "".join(f"{h:>10}" for h in ("count", "p50", "p90", "p95", "p99", "max")))
    rows = report["latency_ms"] | ({"first token (streams)": report["ttft_ms"]} if report["ttft_ms"] else {})
    for name, p in rows.items():
        lines.append(f"  {shown(name)[:30]:30}" + f"{p['count']:10.0f}"
                     + "".join(f"{p[k]:10.1f}" for k in ("p50", "p90", "p95", "p99", "max")))
    if report["slowest"]:
        lines.append("slowest:")
        lines += [f"  {s['latency_ms']:10.1f} ms  {shown(s['request_id'])}  {shown(s['model'])}"
                  for s in report["slowest"]]
    lines.append("usage by model @ provider:" + "".join(f"{h:>12}" for h in ("requests", "prompt", "completion")))
    for key, u in report["usage"].items():
        lines.append(f"  {shown(key)[:40]:40}{u['requests']:12}{u['prompt_tokens']:12}{u['completion_tokens']:12}")
    return "\n".join(lines) + "\n"
