"""The strict Prometheus text reader that the /metrics tests rely on."""

from __future__ import annotations

import pytest

from labgate.testing.prometheus import labels_of, parse_metrics


def test_it_refuses_what_a_scraper_should_not_get() -> None:
    good = "# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n"
    hist = "# HELP h H.\n# TYPE h histogram\n"
    assert parse_metrics(good)["x_total"].samples == {"x_total": 1}
    cases = {
        "end with a newline": good[:-1],
        "a blank line": good + "\n",
        "no # HELP line": good.replace("# HELP x_total X.\n", ""),
        "must end with _total": "# HELP x X.\n# TYPE x counter\nx 1\n",
        "a negative counter": good.replace("x_total 1", "x_total -1"),
        "not a sample line": good.replace("x_total 1", 'x_total{a="b} 1'),
        "a repeated sample": good + "x_total 2\n",
        "outside its family's block": good + "# HELP y Y.\n# TYPE y gauge\ny 1\nx_total 3\n",
        "must be cumulative": hist + 'h_bucket{le="1.0"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
        "end with \\+Inf": hist + 'h_bucket{le="1.0"} 1\nh_sum 1\nh_count 1\n',
    }
    for reason, bad in cases.items():
        with pytest.raises(ValueError, match=reason):
            parse_metrics(bad)


def test_it_reads_families_and_histograms() -> None:
    text = ("# HELP h_seconds H.\n# TYPE h_seconds histogram\n"
            'h_seconds_bucket{a="x\\"y",le="0.5"} 1\nh_seconds_bucket{a="x\\"y",le="+Inf"} 2\n'
            'h_seconds_sum{a="x\\"y"} 0.75\nh_seconds_count{a="x\\"y"} 2\n'
            "# HELP g A gauge.\n# TYPE g gauge\ng NaN\n")
    families = parse_metrics(text)
    assert [(name, f.kind, f.help, len(f.samples)) for name, f in families.items()] == [
        ("h_seconds", "histogram", "H.", 4), ("g", "gauge", "A gauge.", 1)]
    assert labels_of('h_seconds_bucket{a="x\\"y\\n\\\\",le="0.5"}') == {"a": 'x"y\n\\', "le": "0.5"}
