"""``deploy/grafana/render.py`` turns fixed ``query_range`` answers into the panels it draws (no
Prometheus, no browser): one SVG line per series, stats as last values, legends from
``legendFormat``, the heatmap's cumulative buckets as cells."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

RENDER = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "render.py"
START, END = 1_764_230_400.0, 1_764_230_460.0


def load() -> Any:
    spec = importlib.util.spec_from_file_location("_labgate_grafana_render", RENDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = load()


def matrix(*series: tuple[dict[str, str], list[float | str]]) -> list[dict[str, Any]]:
    """A query_range result: each series' values one step (5 s) apart from START."""
    return [{"metric": metric, "values": [[START + 5 * i, str(v)] for i, v in enumerate(values)]}
            for metric, values in series]


ANSWER = matrix(({"status": "200"}, [1, 2, 3, 4]), ({"status": "502"}, [0.5, "NaN", 0.25, 0.5]),
                ({"status": "404"}, [0, 0, 1, 2]))


def panel(kind: str, targets: list[str], unit: str = "reqps") -> dict[str, Any]:
    return {"id": 1, "type": kind, "title": "Requests <by> status", "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
            "fieldConfig": {"defaults": {"unit": unit}},
            "targets": [{"refId": chr(65 + i), "expr": "x", "legendFormat": f} for i, f in enumerate(targets)]}


def test_a_timeseries_panel_draws_one_line_per_series_with_its_legend() -> None:
    out = render.panel_html(panel("timeseries", ["{{status}}"]), [ANSWER], START, END)
    [svg] = re.findall(r"<svg.*?</svg>", out)
    root = ElementTree.fromstring(svg)  # well-formed SVG
    paths = [e for e in root.iter("{http://www.w3.org/2000/svg}path") if e.get("class") == "series"]
    assert len(paths) == 3
    assert [len(re.findall(r"[ML]", p.get("d", ""))) for p in paths] == [4, 3, 4]  # the NaN point is left out
    assert paths[1].get("d", "").count("M") == 2  # and breaks the line
    assert len({p.get("stroke") for p in paths}) == 3
    assert re.findall(r"</i>(.*?) <b>(.*?)</b>", out) == [("200", "4 req/s"), ("502", "0.5 req/s"),
                                                          ("404", "2 req/s")]
    assert "Requests &lt;by&gt; status" in out and "grid-column:1 / span 12" in out


def test_lines_follow_the_values() -> None:
    svg = render.svg_timeseries([("a", [(START, 0.0), (START + 60, 10.0)])], "short", START, END, 400, 200)
    [d] = re.findall(r'class="series" stroke="[^"]+" d="([^"]+)"', svg)
    (x0, y0), (x1, y1) = [tuple(map(float, p[1:].split(","))) for p in d.split()]
    assert x1 > x0 and y1 < y0  # left to right, upwards


def test_every_target_of_a_panel_adds_its_series() -> None:
    out = render.panel_html(panel("timeseries", ["spent {{status}}", "limit"]), [ANSWER, ANSWER[:1]], START, END)
    assert out.count('class="series"') == 4
    assert "spent 502" in out and "limit" in out


def test_a_stat_shows_each_last_value_in_its_unit() -> None:
    out = render.panel_html(panel("stat", ["{{status}}"], "percentunit"), [ANSWER], START, END)
    assert re.findall(r'class="value"[^>]*>([^<]+)<', out) == ["400%", "50%", "200%"]
    assert "<svg" not in out


def test_no_data_says_so() -> None:
    assert "No data" in render.panel_html(panel("timeseries", ["{{status}}"]), [[]], START, END)


def test_the_heatmap_draws_bucket_differences() -> None:
    buckets = matrix(({"le": "0.1"}, [1, 1]), ({"le": "1"}, [3, 1]), ({"le": "+Inf"}, [3, 1]))
    out = render.panel_html(panel("heatmap", ["{{le}}"], "s"), [buckets], START, END)
    # bucket ≤0.1: 1, 1; ≤1: 2, 0; +Inf: 0, 0 → three cells
    assert out.count('class="cell"') == 3


@pytest.mark.parametrize(("value", "unit", "text"), [
    (0.123, "percentunit", "12.3%"), (0.0042, "s", "4.2 ms"), (90, "s", "1.5 min"), (1500, "reqps", "1.5k req/s"),
    (0.00012, "currencyUSD", "$0.00012"), (5e-05, "currencyUSD", "$0.00005"), (0, "currencyUSD", "$0"),
    (1234.5, "currencyUSD", "$1,234.50"), (2_500_000, "short", "2.5M")])
def test_units(value: float, unit: str, text: str) -> None:
    assert render.fmt(value, unit) == text


def test_a_page_lays_out_every_panel_of_a_committed_dashboard() -> None:
    boards = render.dashboards()
    assert len(boards) == 5
    board = boards["labgate-overview"]
    answers = {p["id"]: [ANSWER for _ in p["targets"]] for p in board["panels"]}
    out = render.page(board, answers, START, END, "fixed data")
    assert out.count('<section class="panel"') == len(board["panels"])
    assert "No data" not in out
