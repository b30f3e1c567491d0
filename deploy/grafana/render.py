"""Pictures of the five dashboards' data, drawn by labgate itself (no Grafana server can be had
here): ``docs/img/dashboards/<dashboard>.png``.

    .venv/bin/python deploy/grafana/render.py                # ~1 min: stack, traffic, 5 PNGs
    .venv/bin/python deploy/grafana/render.py --html /tmp/d  # also keep the HTML pages
    .venv/bin/python deploy/grafana/render.py --prometheus http://127.0.0.1:9090 --minutes 60

By default it starts the integration test's stack (``stack.py``: labgate ``--workers 2`` under
simulated traffic with faults, scraped by a real Prometheus every second), sends ``--seconds`` of
traffic, then runs every panel's PromQL of ``dashboards/*.json`` with ``query_range`` over that
window. With ``--prometheus URL`` it reads an existing Prometheus over the last ``--minutes``
instead. Each dashboard becomes one static HTML page laid out on Grafana's 24-column grid
(``gridPos``): time series as inline SVG lines with axes in the panel's unit and a legend from
``legendFormat``, stats as the last value, bar gauges as bars, the heatmap as buckets over time.
Chromium (``LABGATE_CHROMIUM`` or Debian's ``/usr/bin/chromium``, driven by Playwright; never
``playwright install``) screenshots each page 1400 px wide; ``optipng`` (Debian package), when
installed, shrinks the PNGs losslessly.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / "docs" / "img" / "dashboards"
PAGE_W, PAD, GAP, ROW_H, COLUMNS = 1400, 16, 8, 30, 24
TITLE_H, LEGEND_LINE_H, CHAR_W = 26, 16, 7.2
COLOURS = ("#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#f2495c", "#b877d9", "#8ab8ff", "#ffb357",
           "#96d98d", "#ff7383", "#ca95e5", "#fade2a")

# one query's answer: [{"metric": {label: value}, "values": [[unix time, "value"], ...]}, ...]
Matrix = list[dict[str, Any]]
Series = tuple[str, list[tuple[float, float]]]


def dashboards(folder: Path = HERE / "dashboards") -> dict[str, dict[str, Any]]:
    """Dashboard name (file stem) → its JSON."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


# --- values -------------------------------------------------------------------------------------

def legend(template: str, metric: dict[str, str]) -> str:
    """Grafana's ``legendFormat``: ``{{label}}`` replaced by the series' label value."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), template).strip()
    return text or "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def series(matrix: Matrix, template: str) -> list[Series]:
    """The finite points of each series of a ``query_range`` matrix, labelled by ``template``."""
    out = []
    for item in matrix:
        points = [(float(t), float(v)) for t, v in item.get("values", [])]
        out.append((legend(template, item.get("metric", {})), [(t, v) for t, v in points if math.isfinite(v)]))
    return out


def _si(value: float, suffix: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{suffix}"
    return f"{value:.3g}{suffix}"


def fmt(value: float, unit: str) -> str:
    """A value in a Grafana unit: ``reqps``, ``percentunit``, ``s``, ``currencyUSD``, ``short``."""
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "reqps":
        return _si(value, " req/s")
    if unit == "currencyUSD":
        return f"${float(f'{value:.3g}'):.10f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"${value:,.2f}"
    if unit == "s":
        if value == 0 or abs(value) >= 1:
            return _duration(value)
        return f"{value * 1e3:.3g} ms" if abs(value) >= 1e-3 else f"{value * 1e6:.3g} µs"
    return _si(value)


def _duration(seconds: float) -> str:
    for size, name in ((86400, "day"), (3600, "h"), (60, "min")):
        if abs(seconds) >= size:
            return f"{seconds / size:.3g} {name}"
    return f"{seconds:.3g} s"


def ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round axis values covering ``low``..``high``."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(count + 2) if first + (i - 1) * step < high]


# --- panels -------------------------------------------------------------------------------------

def _legend_html(labels: list[str], values: list[str], height: float) -> str:
    items = []
    for i, label in enumerate(labels):
        value = f' <b>{html.escape(values[i])}</b>'
        items.append(f'<span class="item"><i style="background:{COLOURS[i % len(COLOURS)]}"></i>'
                     f'{html.escape(label)}{value}</span>')
    return f'<div class="legend" style="height:{height:.0f}px">{"".join(items)}</div>'


def legend_lines(labels: list[str], width: float) -> int:
    """Lines the legend takes at ``width`` px (items flow left to right)."""
    lines, used = 1, 0.0
    for label in labels:
        size = (len(label) + 4) * CHAR_W + 12
        if used and used + size > width:
            lines, used = lines + 1, 0.0
        used += size
    return lines


def svg_timeseries(lines: list[Series], unit: str, start: float, end: float, width: float, height: float) -> str:
    """Inline SVG: one ``<path class="series">`` per series (gaps break the line), axes in ``unit``."""
    left, bottom, top, right = 64.0, 18.0, 6.0, 8.0
    values = [v for _, points in lines for _, v in points]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    low = min(low, 0.0)
    axis = ticks(low, high)
    low, high = axis[0], axis[-1]
    plot_w, plot_h = width - left - right, height - top - bottom
    step = min((b[0] - a[0] for _, pts in lines for a, b in itertools.pairwise(pts)), default=0.0)

    def x(t: float) -> float:
        return left + (t - start) / ((end - start) or 1.0) * plot_w

    def y(v: float) -> float:
        return top + (1 - (v - low) / ((high - low) or 1.0)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}">']
    for value in axis:
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>'
                     f'<text class="axis" x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                     f'{html.escape(fmt(value, unit))}</text>')
    for i in range(5):
        t = start + (end - start) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(f'<text class="axis" x="{x(t):.1f}" y="{height - 4}" text-anchor="{anchor}">'
                     f'{datetime.fromtimestamp(t).strftime("%H:%M:%S")}</text>')
    for i, (_, points) in enumerate(lines):
        d, previous = [], None
        for t, v in points:
            joined = previous is not None and step and t - previous <= step * 1.5
            d.append(f'{"L" if joined else "M"}{x(t):.1f},{y(v):.1f}')
            previous = t
        parts.append(f'<path class="series" stroke="{COLOURS[i % len(COLOURS)]}" d="{" ".join(d)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def svg_heatmap(lines: list[Series], start: float, end: float, width: float, height: float) -> str:
    """Cumulative ``le`` bucket rates as a heatmap: a row per bucket, darker where fewer requests fell."""
    left, bottom = 64.0, 18.0
    cumulative = sorted(((float(label), dict(points)) for label, points in lines), key=lambda b: b[0])
    times = sorted({t for _, points in cumulative for t in points})
    rows = [(le, {t: points.get(t, 0.0) - (cumulative[i - 1][1].get(t, 0.0) if i else 0.0) for t in times})
            for i, (le, points) in enumerate(cumulative)]
    top = max((v for _, row in rows for v in row.values()), default=0.0) or 1.0
    step = min((b - a for a, b in itertools.pairwise(times)), default=end - start)
    cell_w = step / ((end - start) or 1.0) * (width - left)
    cell_h = (height - bottom) / max(len(rows), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}">']
    for r, (le, row) in enumerate(rows):
        y = height - bottom - (r + 1) * cell_h
        if len(rows) <= 12 or r % 2 == 0:
            label = "+Inf" if math.isinf(le) else fmt(le, "s")
            parts.append(f'<text class="axis" x="{left - 6}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end">'
                         f'≤ {html.escape(label)}</text>')
        for t in times:
            share = max(row[t], 0.0) / top
            if share > 0:
                x = left + (t - start) / ((end - start) or 1.0) * (width - left) - cell_w / 2
                parts.append(f'<rect class="cell" x="{max(x, left):.1f}" y="{y:.1f}" width="{cell_w + 0.5:.1f}" '
                             f'height="{cell_h - 1:.1f}" fill="#ff780a" fill-opacity="{0.15 + 0.85 * share:.2f}"/>')
    for i in range(5):
        t = start + (end - start) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(f'<text class="axis" x="{left + (width - left) * i / 4:.1f}" y="{height - 4}" '
                     f'text-anchor="{anchor}">{datetime.fromtimestamp(t).strftime("%H:%M:%S")}</text>')
    parts.append("</svg>")
    return "".join(parts)


def panel_size(grid: dict[str, int]) -> tuple[float, float]:
    """A panel's pixel size on the page (Grafana's grid: 24 columns, 30 px rows, 8 px gaps)."""
    column = (PAGE_W - 2 * PAD - (COLUMNS - 1) * GAP) / COLUMNS
    return grid["w"] * column + (grid["w"] - 1) * GAP, grid["h"] * ROW_H + (grid["h"] - 1) * GAP


def panel_html(panel: dict[str, Any], answers: list[Matrix], start: float, end: float) -> str:
    """One panel: its title, unit and data, placed on the grid by its ``gridPos``."""
    grid, kind = panel["gridPos"], panel["type"]
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    lines = [s for target, matrix in zip(panel["targets"], answers, strict=True)
             for s in series(matrix, target.get("legendFormat", ""))]
    lines = [(label, points) for label, points in lines if points]
    width, height = panel_size(grid)
    inner_w, inner_h = width - 16, height - TITLE_H - 10
    if not lines:
        body = '<div class="nodata">No data</div>'
    elif kind == "stat":
        body = '<div class="stats">' + "".join(
            f'<div class="stat"><div class="value" style="color:{COLOURS[i % len(COLOURS)]}">'
            f'{html.escape(fmt(points[-1][1], unit))}</div><div class="label">{html.escape(label)}</div></div>'
            for i, (label, points) in enumerate(lines)) + "</div>"
    elif kind == "bargauge":
        most = max(max(points[-1][1] for _, points in lines), 1.0 if unit == "percentunit" else 0.0) or 1.0
        body = '<div class="bars">' + "".join(
            f'<div class="bar"><span class="label">{html.escape(label)}</span><span class="track">'
            f'<span class="fill" style="width:{max(points[-1][1], 0) / most * 100:.1f}%;'
            f'background:{COLOURS[i % len(COLOURS)]}"></span></span>'
            f'<span class="num">{html.escape(fmt(points[-1][1], unit))}</span></div>'
            for i, (label, points) in enumerate(lines)) + "</div>"
    elif kind == "heatmap":
        body = svg_heatmap(lines, start, end, inner_w, inner_h)
    else:
        labels, values = [label for label, _ in lines], [fmt(points[-1][1], unit) for _, points in lines]
        rows = min(legend_lines([f"{a} {b}" for a, b in zip(labels, values, strict=True)], inner_w),
                   int(inner_h / 2 // LEGEND_LINE_H))
        svg_h = inner_h - rows * LEGEND_LINE_H - 4
        body = (svg_timeseries(lines, unit, start, end, inner_w, svg_h)
                + _legend_html(labels, values, rows * LEGEND_LINE_H))
    return (f'<section class="panel" style="grid-column:{grid["x"] + 1} / span {grid["w"]};'
            f'grid-row:{grid["y"] + 1} / span {grid["h"]}"><h2>{html.escape(panel["title"])}'
            f'<small>{html.escape(unit)}</small></h2>{body}</section>')


STYLE = f"""
body {{ margin:0; background:#111217; color:#ccccdc; font:12px/1.3 "DejaVu Sans", Arial, sans-serif; }}
header {{ padding:{PAD}px {PAD}px 0; }}
header h1 {{ font-size:18px; margin:0 0 4px; color:#fff; font-weight:500; }}
header p {{ margin:0; color:#8e8e9e; }}
main {{ display:grid; grid-template-columns:repeat({COLUMNS}, 1fr); grid-auto-rows:{ROW_H}px; gap:{GAP}px;
        padding:{PAD}px; width:{PAGE_W - 2 * PAD}px; }}
.panel {{ background:#181b1f; border:1px solid #2c3235; border-radius:2px; padding:0 8px 8px; overflow:hidden;
          display:flex; flex-direction:column; }}
.panel h2 {{ font-size:13px; font-weight:500; color:#fff; margin:0; height:{TITLE_H}px; line-height:{TITLE_H}px;
             white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }}
.panel h2 small {{ color:#6e6e80; font-weight:400; margin-left:8px; }}
svg .grid {{ stroke:#2c3235; stroke-width:1; }} svg .axis {{ fill:#8e8e9e; font-size:10px; }}
svg .series {{ fill:none; stroke-width:1.6; stroke-linejoin:round; }}
.legend {{ font-size:11px; line-height:{LEGEND_LINE_H}px; overflow:hidden; }}
.legend .item {{ margin-right:12px; white-space:nowrap; }}
.legend i {{ display:inline-block; width:12px; height:3px; margin:0 5px 3px 0; vertical-align:middle; }}
.legend b {{ color:#8e8e9e; font-weight:400; margin-left:4px; }}
.stats {{ flex:1; display:flex; gap:16px; align-items:center; justify-content:center; }}
.stat {{ text-align:center; }} .stat .value {{ font-size:30px; font-weight:500; }}
.stat .label {{ color:#8e8e9e; }}
.bars {{ flex:1; display:flex; flex-direction:column; justify-content:center; gap:6px; }}
.bar {{ display:flex; align-items:center; gap:8px; }} .bar .label {{ width:34%; overflow:hidden;
        text-overflow:ellipsis; white-space:nowrap; }}
.bar .track {{ flex:1; height:16px; background:#22252b; }} .bar .fill {{ display:block; height:100%; }}
.bar .num {{ width:72px; text-align:right; }}
.nodata {{ flex:1; display:flex; align-items:center; justify-content:center; color:#6e6e80; }}
"""


def page(board: dict[str, Any], answers: dict[int, list[Matrix]], start: float, end: float, note: str) -> str:
    """A dashboard as one static HTML page: every panel on the grid, its data inline."""
    panels = "".join(panel_html(p, answers[p["id"]], start, end) for p in board["panels"])
    window = (f'{datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M:%S")} – '
              f'{datetime.fromtimestamp(end).strftime("%H:%M:%S")}')
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(board["title"])}</title>'
            f'<style>{STYLE}</style></head><body><header><h1>{html.escape(board["title"])}</h1>'
            f'<p>{html.escape(window)} · {html.escape(note)}</p></header><main>{panels}</main></body></html>')


# --- Prometheus, pages and screenshots -----------------------------------------------------------

Query = Callable[[str, float, float, float], Matrix]


def collect(board: dict[str, Any], query: Query, start: float, end: float, step: float) -> dict[int, list[Matrix]]:
    """Panel id → the ``query_range`` answer of each of its targets."""
    return {p["id"]: [query(t["expr"], start, end, step) for t in p["targets"]] for p in board["panels"]}


def screenshot(pages: dict[str, str], out: Path) -> list[Path]:
    """Each page as ``out/<name>.png``, 1400 px wide, full height; shrunk by ``optipng`` when installed."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("LABGATE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: install the Debian package `chromium` (or set LABGATE_CHROMIUM)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": PAGE_W, "height": 800}, device_scale_factor=1)
            for name, text in pages.items():
                tab.set_content(text, wait_until="load")
                path = out / f"{name}.png"
                tab.screenshot(path=str(path), full_page=True)
                written.append(path)
        finally:
            browser.close()
    optipng = shutil.which("optipng")
    if optipng:
        subprocess.run([optipng, "-quiet", "-o2", "-strip", "all", *map(str, written)], check=True, timeout=600)
    return written


def _stack() -> Any:
    spec = importlib.util.spec_from_file_location("_labgate_grafana_stack", HERE / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(prom: str, start: float, end: float, note: str, out: Path, html_dir: Path | None) -> list[Path]:
    stack = _stack()
    step = max(1.0, round((end - start) / 240))

    def query(expr: str, a: float, b: float, s: float) -> Matrix:
        result: Matrix = stack.query_range(prom, expr, a, b, s)
        return result

    pages = {name: page(board, collect(board, query, start, end, step), start, end, note)
             for name, board in dashboards().items()}
    if html_dir is not None:
        html_dir.mkdir(parents=True, exist_ok=True)
        for name, text in pages.items():
            (html_dir / f"{name}.html").write_text(text)
    return screenshot(pages, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=45.0, help="traffic to send (default 45)")
    parser.add_argument("--prometheus", help="read this Prometheus instead of starting the test stack")
    parser.add_argument("--minutes", type=float, default=60.0, help="with --prometheus: the window (default 60)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"PNG folder (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--html", type=Path, help="also write the HTML pages here")
    args = parser.parse_args(argv)
    if args.prometheus:
        end = time.time()
        written = render(args.prometheus.rstrip("/"), end - args.minutes * 60, end, args.prometheus, args.out,
                         args.html)
    else:
        stack = _stack()
        with tempfile.TemporaryDirectory(prefix="labgate-render-") as tmp:
            start = time.time()
            try:
                with stack.running(Path(tmp), args.seconds) as (_, prom):
                    time.sleep(3)  # the last scrapes and rule evaluations
                    note = (f"labgate --workers 2 under {args.seconds:g} s of simulated traffic with faults, "
                            "scraped by Prometheus every second · rendered by deploy/grafana/render.py, not Grafana")
                    written = render(prom, start, time.time(), note, args.out, args.html)
            except stack.Unavailable as exc:
                raise SystemExit(str(exc)) from exc
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
