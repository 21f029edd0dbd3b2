"""The metrics tab's chart specs (`console/charts.py`), rule by rule, as tables.

Reports are built the way `MetricsReport.to_dict()` shapes them; nothing here needs Prometheus.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference_endpoints.adapters.console import metrics_tab
from inference_endpoints.adapters.console.charts import (
    ChartSpec,
    chart_specs,
    charts_payload,
    display_unit,
    group_title,
    time_ticks,
    utc_label,
)

START, END = 1_700_000_000.0, 1_700_003_600.0  # 2023-11-14 22:13:20 → 23:13:20 UTC


def series(name: str, unit: str, chart: str, values: list[float], title: str | None = None,
           step: float = 60.0) -> dict[str, Any]:
    return {"name": name, "title": title or name, "unit": unit, "chart": chart, "query": "",
            "points": [[START + i * step, v] for i, v in enumerate(values)], "empty": not values}


def report(*members: dict[str, Any], window: str = "1h", no_requests: bool = False) -> dict[str, Any]:
    return {"org": "default", "endpoint": "ep1", "window": window, "start": START, "end": END, "step_s": 60,
            "device": "cpu", "requests_in_window": 0.0 if no_requests else 10.0, "no_requests": no_requests,
            "series": list(members)}


def only(spec_report: dict[str, Any]) -> ChartSpec:
    specs = chart_specs(spec_report)
    assert len(specs) == 1, specs
    return specs[0]


# ---- units ---------------------------------------------------------------------------------------

UNITS = [  # (unit in the report, raw values, unit shown, values shown)
    ("bytes", [3_500_000_000, 2**30], "GiB", [3.25963, 1.0]),
    ("bytes", [0, 512 * 2**20], "GiB", [0.0, 0.5]),
    ("ratio", [0.00025, 0.5, 1.0], "%", [0.025, 50.0, 100.0]),
    ("s", [0.2, 0.95], "ms", [200.0, 950.0]),
    ("s", [0.5, 2.5], "s", [0.5, 2.5]),
    ("req/s", [0.0333333333, 12.5], "req/s", [0.0333333, 12.5]),
    ("tokens/s", [1500.0], "tokens/s", [1500.0]),
    ("requests", [0, 3], "requests", [0.0, 3.0]),
    ("W", [65.4], "W", [65.4]),
]


@pytest.mark.parametrize(("unit", "raw", "shown_unit", "shown"), UNITS)
def test_values_are_converted_for_display(unit: str, raw: list[float], shown_unit: str,
                                          shown: list[float]) -> None:
    spec = only(report(series("s1", unit, "c", raw, title="Thing")))
    assert spec.unit == shown_unit
    assert [y for _, y in spec.datasets[0].points] == pytest.approx(shown, rel=1e-5)
    assert spec.to_dict()["y"]["title"] == shown_unit


DISPLAY = [("bytes", [], "GiB"), ("ratio", [], "%"), ("s", [], "s"), ("s", [0.999], "ms"), ("s", [1.0], "s")]


@pytest.mark.parametrize(("unit", "values", "shown"), DISPLAY)
def test_display_unit_rules(unit: str, values: list[float], shown: str) -> None:
    assert display_unit(unit, values)[0] == shown


# ---- y axis ---------------------------------------------------------------------------------------

AXES = [  # (unit, values, y min, suggested max, integer ticks)
    ("requests", [0, 0, 0], 0.0, 1.0, 0),      # an idle count: 0..1, never -1..1
    ("requests", [1, 4, 2], 0.0, None, 0),
    ("errors/s", [0.0, 0.0], 0.0, 1.0, None),
    ("req/s", [0.2, 0.4], 0.0, None, None),
    ("bytes", [3e9, 3.1e9], 0.0, None, None),  # memory from 0, not from 2.8 GiB
    ("ratio", [0.00025], 0.0, None, None),
    ("s", [0.1, 0.3], 0.0, None, None),
    ("W", [0.0], 0.0, 1.0, None),
    ("widgets", [-2.0, 3.0], None, None, None),  # an unknown unit that goes negative keeps its range
]


@pytest.mark.parametrize(("unit", "values", "y_min", "suggested_max", "precision"), AXES)
def test_axes_start_at_zero_and_never_go_negative_for_counts(unit: str, values: list[float], y_min: float | None,
                                                             suggested_max: float | None,
                                                             precision: int | None) -> None:
    y = only(report(series("s1", unit, "c", values))).to_dict()["y"]
    assert (y["min"], y["suggested_min"], y["suggested_max"], y["precision"]) == (
        y_min, y_min, suggested_max, precision)


# ---- time axis ------------------------------------------------------------------------------------

LABELS = [(0, "00:00"), (1_700_000_000, "22:13"), (1_700_000_000 + 3 * 3600, "01:13"),
          (1_700_050_000, "12:06"), (86_399, "23:59")]


@pytest.mark.parametrize(("unix_s", "label"), LABELS)
def test_tick_labels_are_24_hour_utc(unix_s: float, label: str) -> None:
    assert utc_label(unix_s) == label


TICKS = [  # (window seconds, tick step seconds)
    (15 * 60, 120), (3600, 600), (6 * 3600, 3600), (24 * 3600, 10800),
]


@pytest.mark.parametrize(("seconds", "step"), TICKS)
def test_ticks_fall_on_round_utc_minutes_within_the_window(seconds: int, step: int) -> None:
    ticks = time_ticks(END - seconds, END)
    assert 2 <= len(ticks) <= 8
    assert all(t.value % step == 0 and END - seconds <= t.value <= END for t in ticks)
    assert [t.label for t in ticks] == [utc_label(t.value) for t in ticks]
    assert all(len(t.label) == 5 and t.label[2] == ":" for t in ticks)


def test_a_window_without_length_has_no_ticks() -> None:
    assert time_ticks(END, END) == [] and time_ticks(END, START) == []


def test_every_chart_shares_the_reports_range_and_says_utc() -> None:
    specs = chart_specs(report(series("request_rate", "req/s", "requests", [1.0] * 3, step=600),
                               series("kv", "ratio", "kv_cache", [0.1] * 60),
                               series("empty", "s", "ttft", [])))
    assert len(specs) == 3
    for spec in specs:
        x = spec.to_dict()["x"]
        assert (x["min"], x["max"]) == (START, END) and "UTC" in x["title"]
        assert x["ticks"] == specs[0].to_dict()["x"]["ticks"]


# ---- grouping, titles, accessible names -------------------------------------------------------------

def test_p50_and_p95_share_one_chart_in_report_order() -> None:
    specs = chart_specs(report(
        series("request_rate", "req/s", "requests", [1.0], title="Request rate"),
        series("latency_p50", "s", "latency", [0.2, 0.3], title="Latency p50"),
        series("latency_p95", "s", "latency", [0.5, 0.9], title="Latency p95"),
        series("ttft_p50", "s", "ttft", [1.2], title="Time to first token p50"),
        series("ttft_p95", "s", "ttft", [2.5], title="Time to first token p95"),
    ))
    assert [s.key for s in specs] == ["requests", "latency", "ttft"]
    latency = specs[1]
    assert latency.title == "Latency" and latency.unit == "ms"
    assert [d.name for d in latency.datasets] == ["latency_p50", "latency_p95"]
    assert [d.label for d in latency.datasets] == ["p50", "p95"]
    assert latency.to_dict()["multi"] and not specs[0].to_dict()["multi"]
    assert specs[2].title == "Time to first token" and specs[2].unit == "s"  # 2.5 s: stays in seconds


ARIA = [  # (series of one chart, window, accessible name)
    ([series("request_rate", "req/s", "requests", [1.0], title="Request rate")], "1h",
     "Request rate (req/s), last 1h"),
    ([series("kv", "ratio", "kv_cache", [0.5], title="KV-cache use")], "15m", "KV-cache use (%), last 15m"),
    ([series("latency_p50", "s", "latency", [0.2], title="Latency p50"),
      series("latency_p95", "s", "latency", [0.4], title="Latency p95")], "6h",
     "Latency (ms): p50, p95, last 6h"),
    ([series("used", "bytes", "device_memory", [1e9], title="Resident memory (engine processes)"),
      series("total", "bytes", "device_memory", [8e9], title="Host memory")], "24h",
     "Memory (GiB): Resident memory (engine processes), Host memory, last 24h"),
]


@pytest.mark.parametrize(("members", "window", "aria"), ARIA)
def test_each_chart_has_an_accessible_name(members: list[dict[str, Any]], window: str, aria: str) -> None:
    assert only(report(*members, window=window)).aria_label == aria


TITLES = [("latency", ["Latency p50", "Latency p95"], "Latency"),
          ("device_memory", ["GPU memory used", "GPU memory total"], "GPU memory"),
          ("tokens", ["Prompt tokens", "Generated tokens"], "Tokens"),
          ("queue", ["Running requests", "Waiting requests"], "Requests in the engine"),
          ("odd_group", ["A", "B"], "Odd group"),
          ("requests", ["Request rate"], "Request rate")]


@pytest.mark.parametrize(("key", "titles", "title"), TITLES)
def test_group_titles(key: str, titles: list[str], title: str) -> None:
    assert group_title(key, titles) == title


# ---- empty groups ---------------------------------------------------------------------------------

EMPTY = [  # (unit, no requests in the window, message)
    ("s", True, "No requests in this window."),
    ("req/s", True, "No requests in this window."),
    ("s", False, "No data in this window."),
    ("bytes", True, "No data in this window."),  # no exporter is not "no requests"
]


@pytest.mark.parametrize(("unit", "no_requests", "message"), EMPTY)
def test_a_group_without_points_says_so(unit: str, no_requests: bool, message: str) -> None:
    spec = only(report(series("a", unit, "g", []), series("b", unit, "g", []), no_requests=no_requests))
    data = spec.to_dict()
    assert spec.empty and data["empty"] and data["empty_message"] == message
    assert all(d["points"] == [] for d in data["datasets"])


def test_a_group_with_one_empty_series_still_draws_the_other() -> None:
    spec = only(report(series("a", "s", "latency", [0.2]), series("b", "s", "latency", [])))
    assert not spec.empty and spec.empty_message == ""


MALFORMED = [None, [], "text", {"series": None}, {"series": [None, 3]},
             {"start": "x", "series": [{"name": "a", "points": [[1, "nan"], [2, None], ["t", 1], [3]]}]}]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_reports_give_no_or_empty_charts_never_an_error(data: Any) -> None:
    payload = charts_payload(data)
    json.dumps(payload, allow_nan=False)
    assert all(c["empty"] for c in payload["charts"])


# ---- what the page embeds --------------------------------------------------------------------------

def test_load_series_embeds_chart_specs_and_keeps_the_report_for_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_endpoints.adapters.metrics import series as metrics_series

    raw = report(series("mem", "bytes", "device_memory", [3_500_000_000], title="Memory </script>"))
    monkeypatch.setattr(metrics_series, "endpoint_series", lambda *a, **k: raw)
    result = metrics_tab.load_series("http://127.0.0.1:9", "default", "ep1", "1h")
    assert result.available and result.data == raw  # the JSON API's shape is unchanged
    text = result.charts_json()
    assert "</script>" not in text and "<" not in text
    charts = json.loads(text)["charts"]
    assert charts[0]["unit"] == "GiB" and charts[0]["datasets"][0]["points"][0][1] == pytest.approx(3.25963)


def test_unavailable_metrics_embed_no_charts() -> None:
    result = metrics_tab.MetricsResult(False, "down")
    assert json.loads(result.charts_json()) == {"charts": []}
