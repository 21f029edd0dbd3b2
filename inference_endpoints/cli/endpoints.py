"""`endpoints list | show | stop | rm` (and what `create` shows; create itself is in create.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from inference_endpoints.cli.common import (
    STATUS_STYLE,
    Context,
    load_context,
    out,
    require_endpoint,
    use_stack,
    user_errors,
)
from inference_endpoints.cli.output import JsonFlag, Table, minute, print_json
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.settings import Settings


def config_table(spec: object) -> Table:
    from inference_endpoints.core.serving_config import ServingSpec

    assert isinstance(spec, ServingSpec)
    table = Table(show_header=False, title="Serving configuration")
    table.add_row("command", spec.command_line())
    for key, value in sorted(spec.env.items()):
        table.add_row(f"env {key}", value)
    for mount in spec.mounts:
        table.add_row("mount (read-only)", f"{mount.source} -> {mount.target}")
    return table


def phase_timings(ep: Endpoint) -> str:
    """Where the startup time went: requested → scheduled → loading → healthy."""
    marks = [("requested", ep.created_at), ("scheduled", ep.scheduled_at),
             ("loading", ep.loading_at), ("healthy", ep.healthy_at)]
    parts, previous = [], None
    for label, ts in marks:
        if ts is None:
            continue
        if previous is None:
            parts.append(f"{label} {ts.strftime('%H:%M:%S')}")
        else:
            parts.append(f"{label} +{(ts - previous).total_seconds():.1f}s")
        previous = ts
    return " → ".join(parts)


def show_endpoint(ctx: Context, endpoint_id: str) -> None:
    from inference_endpoints.core.serving_config import ServingSpec
    from inference_endpoints.urls import endpoint_urls

    ep = ctx.registry.get_endpoint(endpoint_id)
    assert ep is not None
    org = ctx.registry.get_org(ep.org_id)
    urls = endpoint_urls(ep.name, org.name if org else ep.org_id, ctx.settings)
    table = Table(show_header=False, title=f"endpoint {ep.name}")
    style = STATUS_STYLE.get(ep.status, "white")
    table.add_row("status", f"[{style}]{ep.status}[/]")
    if ep.reason_code:
        table.add_row("reason", f"{ep.reason_code}: {ep.reason_message}")
        table.add_row("hint", ep.reason_hint or "")
    table.add_row("url", f"{urls.url}/v1")
    table.add_row("url (path form, no DNS needed)", f"{urls.path_url}/v1")
    table.add_row("health check", f"{urls.path_url}/health")
    table.add_row("authentication", "Authorization: Bearer <your organization's API key>")
    table.add_row("model name", ep.served_model_name)
    table.add_row("checkpoint", ep.checkpoint_id)
    table.add_row("instance", ep.instance)
    table.add_row("max context / precision / quantization",
                  f"{ep.max_context} / {ep.precision} / {ep.quantization}")
    table.add_row("serve run", ep.serve_run_id or "-")
    table.add_row("startup phases", phase_timings(ep))
    out.print(table)
    if ep.min_replicas > 1 or ep.max_replicas > 1:
        from inference_endpoints.cli.scale import replicas_table

        out.print(replicas_table(ctx, ep))
    out.print(config_table(ServingSpec.from_json(ep.serving_config_json)))
    events = Table("time", "event", "reason", "message", title="activity")
    for ev in ctx.registry.activity(ep.id):
        change = f"{ev.from_status or ''} → {ev.to_status}" if ev.to_status else ev.kind
        events.add_row(ev.at.strftime("%H:%M:%S"), change, ev.reason_code or "",
                       ev.message.splitlines()[0] if ev.message else "")
    out.print(events)


def list_cmd(as_json: JsonFlag = False) -> None:
    """List this organization's endpoints, with requests running and served (from the gateway)."""
    from inference_endpoints.adapters.gateway.stats import fetch_traffic
    from inference_endpoints.cli.documents import endpoint_summary

    ctx = load_context()
    traffic = fetch_traffic(ctx.settings)
    rows = [endpoint_summary(ctx, ep, traffic) for ep in ctx.registry.list_endpoints(ctx.org_id)]
    if as_json:
        print_json(rows)
        return
    table = Table("name", "status", "model", "instance", "running", "requests", "url", "created")
    for row in rows:
        style = STATUS_STYLE.get(row["status"], "white")
        table.add_row(row["name"], f"[{style}]{row['status']}[/]",
                      f"{row['model']} ({row['base_model'] or '?'} / {row['checkpoint']['name'] or '?'})",
                      row["instance"],
                      *("?" if row[k] is None else str(row[k]) for k in ("in_flight", "requests")),
                      row["path_url"], minute(row["created_at"]))
    out.print(table)
    if traffic is None:
        out.print("[dim]The gateway is not answering: request counts unknown (`endpoints status`).[/]")


def show_cmd(name: Annotated[str, typer.Argument(help="Endpoint name or id")],
             as_json: JsonFlag = False) -> None:
    """Show an endpoint: status, URL, serving configuration, replicas, activity."""
    ctx = load_context()
    ep = require_endpoint(ctx, name)
    if as_json:
        from inference_endpoints.cli.documents import endpoint_detail

        print_json(endpoint_detail(ctx, ep))
        return
    show_endpoint(ctx, ep.id)


def stop_endpoint_by_name(name: str, remove: bool) -> str:
    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    ep = require_endpoint(ctx, name)
    from flows.stop_endpoint import stop_endpoint

    org = ctx.registry.get_org(ctx.org_id)
    with out.status(f"Stopping {name}…"), user_errors():
        return str(stop_endpoint(endpoint=ep.id, org=org.name if org else settings.org,
                                 remove=remove))


def stop_cmd(name: Annotated[str, typer.Argument(help="Endpoint name or id")]) -> None:
    """Stop an endpoint; its checkpoint lease is released once it is confirmed gone."""
    out.print(f"{name}: {stop_endpoint_by_name(name, remove=False)}")


def rm_cmd(name: Annotated[str, typer.Argument(help="Endpoint name or id")]) -> None:
    """Stop an endpoint if needed, then remove its record (freeing the name)."""
    out.print(f"{name}: {stop_endpoint_by_name(name, remove=True)}")


