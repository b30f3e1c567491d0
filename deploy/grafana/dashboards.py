"""The five Grafana dashboards (the seeds' overview, tokens and cost, performance, provider
health, system) as data; ``python deploy/grafana/dashboards.py`` writes them to
``deploy/grafana/dashboards/*.json``. The JSON files are committed; a test checks that they
match this script, that every panel's PromQL returns data from a real Prometheus scraping
labgate, and that every metric they name exists.

Every panel queries the datasource chosen in the dashboard's ``datasource`` variable
(Prometheus; the provisioned one is ``labgate-prometheus``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24

# (title, type, unit, [(expr, legend)], width)
Panel = tuple[str, str, str, list[tuple[str, str]], int]

DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "labgate-overview": ("labgate / Overview", [
        ("Requests per second", "stat", "reqps", [("sum(rate(labgate_requests_total[5m]))", "req/s")], 6),
        ("Error ratio (5xx)", "stat", "percentunit", [(
            'sum(rate(labgate_requests_total{status=~"5.."}[5m])) / sum(rate(labgate_requests_total[5m]))',
            "errors")], 6),
        ("p95 latency", "stat", "s", [(
            "histogram_quantile(0.95, sum by (le) (rate(labgate_request_duration_seconds_bucket[5m])))", "p95")], 6),
        ("In flight", "stat", "short", [("sum(labgate_requests_in_flight)", "in flight")], 6),
        ("Requests by status", "timeseries", "reqps", [("labgate:requests_by_status:rate5m", "{{status}}")], 12),
        ("Requests by model", "timeseries", "reqps", [
            ('sum by (model) (labgate:requests:rate5m{model!=""})', "{{model}}")], 12),
        ("Requests by endpoint", "timeseries", "reqps", [
            ("sum by (endpoint) (rate(labgate_requests_total[5m]))", "{{endpoint}}")], 12),
        ("Not routed (unknown model, bad key or body)", "timeseries", "reqps", [
            ('sum by (status) (rate(labgate_requests_total{provider=""}[5m]))', "{{status}}")], 12),
        ("Response cache hit ratio", "stat", "percentunit", [("labgate:cache_hit_ratio:rate5m", "hits")], 8),
        ("Response cache results", "timeseries", "reqps", [("labgate:cache_requests:rate5m", "{{result}}")], 16),
    ]),
    "labgate-tokens": ("labgate / Tokens and cost", [
        ("Tokens per second by model", "timeseries", "short", [
            ("sum by (model, type) (labgate:tokens:rate5m)", "{{model}} {{type}}")], 12),
        ("Completion tokens per minute by provider", "timeseries", "short", [
            ('sum by (provider) (rate(labgate_tokens_total{type="completion"}[5m])) * 60', "{{provider}}")], 12),
        ("Tokens in the last hour by model", "bargauge", "short", [
            ("sum by (model) (increase(labgate_tokens_total[1h]))", "{{model}}")], 12),
        ("Completion tokens per successful request", "timeseries", "short", [(
            'sum by (model) (rate(labgate_tokens_total{type="completion"}[5m]))'
            ' / sum by (model) (rate(labgate_requests_total{status="200"}[5m]))', "{{model}}")], 12),
        ("Prompt share of tokens", "timeseries", "percentunit", [(
            'sum(rate(labgate_tokens_total{type="prompt"}[5m])) / sum(rate(labgate_tokens_total[5m]))',
            "prompt share")], 12),
        ("Tokens saved by the response cache", "timeseries", "short", [
            ("sum by (type) (rate(labgate_cache_saved_tokens_total[5m]))", "{{type}}")], 12),
        ("Spend per hour", "stat", "currencyUSD", [("sum(labgate:cost_usd:rate5m) * 3600", "USD/h")], 6),
        ("Spend in the last 24 h", "stat", "currencyUSD", [
            ("sum(increase(labgate_cost_usd_total[24h]))", "USD")], 6),
        ("A day's spend at the last hour's rate", "stat", "currencyUSD", [
            ("labgate:cost_usd_per_day:projected_1h", "USD/day")], 6),
        ("Budget thresholds passed (24 h)", "stat", "short", [
            ("sum(increase(labgate_budget_alerts_total[24h])) or vector(0)", "alerts")], 6),
        ("Budget spend, share of the limit", "bargauge", "percentunit", [
            ("labgate:budget_spend_ratio", "{{budget}} ({{period}})")], 12),
        ("Budget spend at the window's end, at the last hour's rate (share of the limit)", "timeseries",
         "percentunit", [("labgate:budget_spend_ratio:projected", "{{budget}} ({{period}})")], 12),
        ("Budget spend and limit (USD)", "timeseries", "currencyUSD", [
            ("labgate:budget_spend_usd", "spent {{budget}}"), ("labgate:budget_limit_usd", "limit {{budget}}"),
            ("labgate:budget_spend_usd:projected", "projected {{budget}}")], 12),
        ("Time left in each budget's window", "bargauge", "s", [
            ("max by (budget) (labgate_budget_window_end_seconds) - time()", "{{budget}}")], 12),
        ("Spend per hour by model", "timeseries", "currencyUSD", [
            ("sum by (model) (labgate:cost_usd:rate5m) * 3600", "{{model}}")], 12),
        ("Spend per hour by provider", "timeseries", "currencyUSD", [
            ("sum by (provider) (labgate:cost_usd:rate5m) * 3600", "{{provider}}")], 12),
        ("Cost per successful request by model", "timeseries", "currencyUSD", [(
            "sum by (model) (labgate:cost_usd:rate5m)"
            ' / sum by (model) (rate(labgate_requests_total{status="200"}[5m]))', "{{model}}")], 12),
        ("Spend in the last hour by model", "bargauge", "currencyUSD", [
            ("sum by (model) (increase(labgate_cost_usd_total[1h]))", "{{model}}")], 12),
    ]),
    "labgate-performance": ("labgate / Performance", [
        ("Latency p50 / p95 / p99 by model", "timeseries", "s", [
            ("labgate:request_duration_seconds:p50_5m", "p50 {{model}}"),
            ("labgate:request_duration_seconds:p95_5m", "p95 {{model}}"),
            ("labgate:request_duration_seconds:p99_5m", "p99 {{model}}")], 12),
        ("Time to first token p50 / p95 by model", "timeseries", "s", [(
            "histogram_quantile(0.5, sum by (le, model) (rate(labgate_time_to_first_token_seconds_bucket[5m])))",
            "p50 {{model}}"), ("labgate:time_to_first_token_seconds:p95_5m", "p95 {{model}}")], 12),
        ("Latency p95 by endpoint", "timeseries", "s", [(
            "histogram_quantile(0.95, sum by (le, endpoint) (rate(labgate_request_duration_seconds_bucket[5m])))",
            "{{endpoint}}")], 12),
        ("Latency distribution", "heatmap", "s", [(
            "sum by (le) (rate(labgate_request_duration_seconds_bucket[5m]))", "{{le}}")], 12),
        ("Mean latency by provider", "timeseries", "s", [(
            "sum by (provider) (rate(labgate_request_duration_seconds_sum[5m]))"
            " / sum by (provider) (rate(labgate_request_duration_seconds_count[5m]))", "{{provider}}")], 12),
        ("p95 latency vs its 6 h baseline", "timeseries", "s", [
            ("labgate:request_duration_seconds:p95_5m", "p95 {{model}}"),
            ("labgate:request_duration_seconds:p95_5m:avg_6h", "6 h mean {{model}}")], 12),
    ]),
    "labgate-providers": ("labgate / Provider health", [
        ("Error ratio by provider", "timeseries", "percentunit", [
            ("labgate:provider_error_ratio:rate5m", "{{provider}}")], 12),
        ("Successful requests by provider", "timeseries", "reqps", [
            ("labgate:provider_successes:rate5m", "{{provider}}")], 12),
        ("Failed attempts by provider", "timeseries", "short", [
            ("labgate:upstream_failures:rate5m", "{{provider}}")], 12),
        ("Failed attempts by deployment and cause", "timeseries", "short", [
            ("labgate:upstream_failures_by_error:rate5m", "{{deployment}} {{error}}")], 12),
        ("Failed attempts per routed request (fallbacks)", "stat", "short", [
            ("labgate:fallback_ratio:rate5m", "per request")], 8),
        ("Streams that failed after they started", "timeseries", "short", [
            ("sum by (provider) (rate(labgate_stream_errors_total[5m]))", "{{provider}}")], 8),
        ("Error ratio vs its 6 h baseline", "timeseries", "percentunit", [
            ("labgate:provider_error_ratio:rate5m", "now {{provider}}"),
            ("labgate:provider_error_ratio:avg_6h", "6 h mean {{provider}}"),
            ("labgate:provider_error_ratio:avg_6h + 3 * labgate:provider_error_ratio:stddev_6h",
             "alert line {{provider}}")], 8),
    ]),
    "labgate-system": ("labgate / System", [
        ("Up", "stat", "short", [('up{job="labgate"}', "{{instance}}")], 6),
        ("Uptime", "stat", "s", [("time() - min(labgate_start_time_seconds)", "uptime")], 6),
        ("Version", "stat", "short", [("count by (version) (labgate_build_info)", "{{version}}")], 6),
        ("Workers reporting / missing", "stat", "short", [
            ("sum(labgate_metrics_workers)", "reporting"), ("sum(labgate_metrics_workers_missing)", "missing")], 6),
        ("In flight", "timeseries", "short", [("sum(labgate_requests_in_flight)", "in flight")], 12),
        ("Scrape duration", "timeseries", "s", [('scrape_duration_seconds{job="labgate"}', "{{instance}}")], 12),
        ("History records written / dropped", "timeseries", "short", [
            ("sum(rate(labgate_history_written_total[5m]))", "written/s"),
            ("labgate:history_dropped:rate5m", "dropped/s")], 12),
        ("History queue", "timeseries", "short", [("sum(labgate_history_queued)", "queued")], 12),
    ]),
}


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    out, x, y, row_height = [], 0, 0, 0
    for number, (panel_title, kind, unit, queries, width) in enumerate(panels, 1):
        height = 4 if kind == "stat" else 8
        if x + width > WIDTH:
            x, y = 0, y + row_height
            row_height = 0
        out.append({
            "id": number, "type": kind, "title": panel_title, "datasource": DATASOURCE,
            "gridPos": {"h": height, "w": width, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                         "legendFormat": legend, **({"format": "heatmap"} if kind == "heatmap" else {})}
                        for i, (expr, legend) in enumerate(queries)],
        })
        x += width
        row_height = max(row_height, height)
    return {
        "uid": uid, "title": title, "tags": ["labgate"], "timezone": "browser", "schemaVersion": 39,
        "version": 1, "editable": True, "refresh": "30s", "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": []}, "panels": out,
    }


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
            for uid, (title, panels) in DASHBOARDS.items()}


def main() -> int:
    target = HERE / "dashboards"
    target.mkdir(exist_ok=True)
    for name, text in render().items():
        (target / name).write_text(text)
        print(f"wrote {target / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
