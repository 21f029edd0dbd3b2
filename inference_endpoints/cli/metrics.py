"""`endpoints metrics NAME [--window 1h]`: current values and sparklines from Prometheus."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

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

DEVICE_WORDS = {"cpu": "CPU: the engine's processes (no GPU on this host)", "gpu": "GPU (NVML)",
                None: "no device metrics in this window"}


def metrics_cmd(
    name: Annotated[str, typer.Argument(help="Endpoint name or id")],
    window: Annotated[str, typer.Option(help=f"One of {', '.join(WINDOWS)}")] = "1h",
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
        now = {v.name: v.value for v in current_values(url, org_name, ep.name, endpoint_id=ep.id)}
        report = endpoint_series(url, org_name, ep.name, window, endpoint_id=ep.id)
    except PrometheusUnavailable as exc:
        err.print(f"[red]Metrics unavailable:[/] {exc}")
        raise typer.Exit(1) from None
    out.print(render(report, now, ep.status))


def render(report: MetricsReport, now: dict[str, float | None], status: str) -> Table:
    title = f"{report.endpoint} ({status}) · last {report.window} · step {report.step_s} s"
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
