"""The metrics tab's charts: a metrics report (`MetricsReport.to_dict()`) as Chart.js-ready specs.

Pure (no I/O), so the display rules are unit-tested here rather than in a browser:

* one chart per `chart` group (p50 and p95 share one), datasets in the report's order;
* values in units people read: bytes as GiB, ratios as percent, seconds as ms when every
  value of the chart is under a second; other units (req/s, tokens/s, requests, W) as they are;
* y from 0 (every unit the tab shows is a count, rate, size or share: never negative), with
  an axis of 0..1 rather than Chart.js's -1..1 when a chart is all zeros;
* every chart on the report's own [start, end], with x ticks at round UTC minutes
  labelled "HH:MM" (24-hour; the axis title says UTC);
* an accessible name per chart, and a plain message instead of a chart when a group has no points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

GIB = 1024**3
# Tick spacing candidates (seconds): round minutes and hours, at most MAX_TICKS per window.
TICK_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_TICKS = 8
# Names for groups of several series whose titles share no leading words.
GROUP_TITLES = {"tokens": "Tokens", "queue": "Requests in the engine", "device_memory": "Memory",
                "latency": "Latency", "ttft": "Time to first token"}
# Units whose emptiness means "no traffic" rather than "no exporter".
REQUEST_UNITS = frozenset({"req/s", "errors/s", "s", "tokens/s"})
WHOLE_UNITS = frozenset({"requests"})  # counts: integer ticks
# Counts, rates, sizes, shares, power: an axis below 0 would only ever show noise.
NON_NEGATIVE_UNITS = frozenset({"req/s", "errors/s", "s", "tokens/s", "requests", "ratio", "bytes", "W"})
X_TITLE = "Time (UTC)"


@dataclass(frozen=True)
class Dataset:
    name: str
    label: str
    points: list[list[float]]  # [[unix seconds, display value], ...]


@dataclass(frozen=True)
class Tick:
    value: float
    label: str


@dataclass(frozen=True)
class ChartSpec:
    key: str
    title: str
    unit: str
    aria_label: str
    x_min: float
    x_max: float
    x_ticks: list[Tick]
    y_min: float | None
    y_suggested_max: float | None
    y_precision: int | None
    datasets: list[Dataset] = field(default_factory=list)
    empty_message: str = ""

    @property
    def empty(self) -> bool:
        return not any(d.points for d in self.datasets)

    def to_dict(self) -> dict[str, Any]:
        """The JSON console.js draws; keys are what `drawChart` reads."""
        return {"key": self.key, "title": self.title, "unit": self.unit, "aria_label": self.aria_label,
                "empty": self.empty, "empty_message": self.empty_message,
                "multi": len(self.datasets) > 1,
                "x": {"min": self.x_min, "max": self.x_max, "title": X_TITLE,
                      "ticks": [asdict(t) for t in self.x_ticks]},
                "y": {"min": self.y_min, "suggested_min": self.y_min, "suggested_max": self.y_suggested_max,
                      "precision": self.y_precision, "title": self.unit},
                "datasets": [asdict(d) for d in self.datasets]}


def utc_label(unix_s: float) -> str:
    """24-hour UTC "HH:MM": the same for every viewer, whatever their browser's locale."""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%H:%M")


def time_ticks(start: float, end: float) -> list[Tick]:
    """Ticks at multiples of a round step (UTC-aligned), at most MAX_TICKS within [start, end]."""
    span = end - start
    if not (math.isfinite(span) and span > 0):
        return []
    step = next((s for s in TICK_STEPS if span / s <= MAX_TICKS), TICK_STEPS[-1])
    first = math.ceil(start / step) * step
    return [Tick(float(t), utc_label(t)) for t in range(int(first), int(end) + 1, step)]


def display_unit(unit: str, values: Sequence[float]) -> tuple[str, float]:
    """(unit shown, factor to multiply by): bytes → GiB, ratio → %, sub-second s → ms."""
    if unit == "bytes":
        return "GiB", 1 / GIB
    if unit == "ratio":
        return "%", 100.0
    if unit == "s" and values and max(abs(v) for v in values) < 1:
        return "ms", 1000.0
    return unit, 1.0


def _number(raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _points(raw: Any) -> list[tuple[float, float]]:
    """[[t, v], ...] as floats; malformed or non-finite pairs dropped."""
    out: list[tuple[float, float]] = []
    for pair in raw if isinstance(raw, list) else []:
        if isinstance(pair, list | tuple) and len(pair) == 2:
            t, v = _number(pair[0]), _number(pair[1])
            if t is not None and v is not None:
                out.append((t, v))
    return out


def _round(value: float) -> float:
    """Six significant digits: enough for a chart, and a smaller page."""
    return float(f"{value:.6g}")


def group_title(key: str, titles: Sequence[str]) -> str:
    """One series: its title. Several: their shared leading words ("Latency p50/p95" → "Latency")."""
    if len(titles) == 1:
        return titles[0]
    words = [t.split() for t in titles]
    shared: list[str] = []
    for column in zip(*words, strict=False):
        if len(set(column)) != 1:
            break
        shared.append(column[0])
    return " ".join(shared) or GROUP_TITLES.get(key, key.replace("_", " ").capitalize())


def _series_label(title: str, shared: str) -> str:
    """In a group, what tells the series apart ("p95"), else its whole title."""
    rest = title[len(shared):].strip() if shared and title.startswith(shared) else ""
    return rest or title


def chart_specs(report: Mapping[str, Any]) -> list[ChartSpec]:
    """One spec per chart group of the report, in the order groups first appear."""
    start, end = _number(report.get("start")) or 0.0, _number(report.get("end")) or 0.0
    window = str(report.get("window") or "")
    no_requests = bool(report.get("no_requests"))
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for s in report.get("series") or []:
        if isinstance(s, Mapping):
            groups.setdefault(str(s.get("chart") or s.get("name") or "series"), []).append(s)
    ticks = time_ticks(start, end)
    return [_chart(key, members, start, end, window, ticks, no_requests) for key, members in groups.items()]


def _chart(key: str, members: list[Mapping[str, Any]], start: float, end: float, window: str,
           ticks: list[Tick], no_requests: bool) -> ChartSpec:
    raw_unit = str(members[0].get("unit") or "")
    titles = [str(m.get("title") or m.get("name") or key) for m in members]
    title = group_title(key, titles)
    series_points = [_points(m.get("points")) for m in members]
    values = [v for pts in series_points for _, v in pts]
    unit, factor = display_unit(raw_unit, values)
    datasets = [Dataset(str(m.get("name") or t), _series_label(t, title) if len(members) > 1 else t,
                        [[t_, _round(v * factor)] for t_, v in pts])
                for m, t, pts in zip(members, titles, series_points, strict=True)]
    shown = [v * factor for v in values]
    y_min = 0.0 if raw_unit in NON_NEGATIVE_UNITS or not shown or min(shown) >= 0 else None
    all_zero = bool(shown) and max(abs(v) for v in shown) == 0
    parts = ", ".join(d.label for d in datasets) if len(datasets) > 1 else ""
    aria = f"{title} ({unit})" if unit else title
    aria += f": {parts}" if parts else ""
    aria += f", last {window}" if window else ""
    empty_message = ""
    if not values:
        empty_message = ("No requests in this window." if no_requests and raw_unit in REQUEST_UNITS
                         else "No data in this window.")
    return ChartSpec(key, title, unit, aria, start, end, ticks, y_min, 1.0 if all_zero else None,
                     0 if raw_unit in WHOLE_UNITS else None, datasets, empty_message)


def charts_payload(report: Any) -> dict[str, Any]:
    """What the page embeds: the specs plus the shared range, or no charts for a malformed report."""
    if not isinstance(report, Mapping):
        return {"charts": []}
    return {"window": report.get("window"), "start": report.get("start"), "end": report.get("end"),
            "charts": [c.to_dict() for c in chart_specs(report)]}
