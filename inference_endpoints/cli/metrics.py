"""`endpoints metrics NAME [--window 1h]`: current values and sparklines from Prometheus."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from inference_endpoints.adapters.metrics.config import MetricsConfig
from inference_endpoints.adapters.metrics.format import format_value, sparkline
from inference_endpoints.adapters.metrics.queries import WINDOWS
from inference_endpoints.adapters.metrics.series import (
    MetricsReport,
    PrometheusUnavailable,
    current_values,
    endpoint_series,
)
from inference_endpoints.cli.common import err, load_context, out, require_endpoint
from inference_endpoints.cli.output import JsonFlag, Table, print_json

DEVICE_WORDS = {"cpu": "CPU: the engine's processes (no GPU on this host)", "gpu": "GPU (NVML)",
                None: "no device metrics in this window"}


def metrics_cmd(
    name: Annotated[str, typer.Argument(help="Endpoint name or id")],
    window: Annotated[str, typer.Option(help=f"One of {', '.join(WINDOWS)}")] = "1h",
    replica: Annotated[int | None, typer.Option(
        "--replica", "-r", help="One replica's engine and device series (0 is the first); "
        "the gateway's request and error rates stay the endpoint's")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show an endpoint's request rate, latency, TTFT, tokens/s, errors, queue, KV cache and device use."""
    if window not in WINDOWS:
        err.print(f"[red]Unknown window {window!r}[/]: choose one of {', '.join(WINDOWS)}.")
        raise typer.Exit(2)
    ctx = load_context()
    ep = require_endpoint(ctx, name)
    org = ctx.registry.get_org(ctx.org_id)
    org_name = org.name if org else ctx.settings.org
    url = MetricsConfig().url
    try:
        now = {v.name: v.value for v in current_values(url, org_name, ep.name, endpoint_id=ep.id,
                                                       replica=replica)}
        report = endpoint_series(url, org_name, ep.name, window, endpoint_id=ep.id, replica=replica)
    except PrometheusUnavailable as exc:
        err.print(f"[red]Metrics unavailable:[/] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        print_json(metrics_document(report, now, ep.status))
        return
    out.print(render(report, now, ep.status))


def metrics_document(report: MetricsReport, now: dict[str, float | None], status: str) -> dict[str, Any]:
    """Every series with its unit, current value and points ([unix seconds, value])."""
    series = []
    for s in report.series:
        values = [v for _, v in s.points]
        series.append({"name": s.name, "title": s.title, "unit": s.unit, "now": now.get(s.name),
                       "min": min(values) if values else None, "avg": _mean(values) if values else None,
                       "max": max(values) if values else None,
                       "points": [[t, v] for t, v in s.points]})
    return {"endpoint": report.endpoint, "org": report.org, "status": status, "window": report.window,
            "start": report.start, "end": report.end, "step_s": report.step_s, "device": report.device,
            "requests_in_window": report.requests_in_window, "no_requests": report.no_requests,
            "replica": report.replica, "series": series}


def render(report: MetricsReport, now: dict[str, float | None], status: str) -> Table:
    title = f"{report.endpoint} ({status}) · last {report.window} · step {report.step_s} s"
    if report.replica is not None:
        title += f" · replica {report.replica} (request and error rates: the whole endpoint's)"
    caption = [f"Device: {DEVICE_WORDS.get(report.device, report.device)}"]
    if report.no_requests:
        caption.insert(0, "No requests in this window.")
    table = Table("metric", "now", "min", "avg", "max", f"last {report.window}", title=title,
                  caption="  ·  ".join(caption))
    for s in report.series:
        values = [v for _, v in s.points]
        stats = ([format_value(f(values), s.unit) for f in (min, _mean, max)] if values
                 else ["-", "-", "-"])
        table.add_row(s.title, format_value(now.get(s.name), s.unit), *stats,
                      sparkline(values) if values else "[dim]no data[/]")
    return table


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
