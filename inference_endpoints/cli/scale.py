"""`endpoints scale NAME --min-replicas N`: record the wanted replica count; the reconciler acts.

The command records an intent (like `stop`) and runs one reconcile pass for the endpoint at
once, so new replicas are submitted and surplus ones start draining before it returns; if
Prefect cannot be reached the scheduled pass does the same a moment later.
"""

from __future__ import annotations

from typing import Annotated

import typer

from inference_endpoints.cli.common import Context, err, load_context, out, require_endpoint, use_stack
from inference_endpoints.cli.output import ScaleDownAfterOption, ScaleTargetOption, Table
from inference_endpoints.core.replica_counts import replica_problems, scaling_problems
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.settings import Settings


def replicas_table(ctx: Context, ep: Endpoint) -> Table:
    """Each running replica: its slot, phase, address and serve run."""
    from inference_endpoints.cli.documents import replica_rows
    from inference_endpoints.services.replicas import replica_settings

    r = replica_settings(ep)
    autoscaled = (f"autoscaled {r['min']} to {r['max']} at {r['scale_target']:g} in flight per replica"
                  if r["autoscaled"] else "fixed")
    table = Table("replica", "phase", "address", "serve run", "flow run",
                  title=f"replicas of {ep.name}: {r['wanted']} wanted ({autoscaled})")
    for row in replica_rows(ctx, ep):
        table.add_row(str(row["replica"]), row["phase"], row["address"] or "-", row["serve_run"],
                      row["flow_run_id"] or "-")
    return table


def scale_cmd(
    name: Annotated[str, typer.Argument(help="Endpoint name or id")],
    min_replicas: Annotated[int, typer.Option(help="Engines kept serving (1 to 8)")],
    max_replicas: Annotated[int | None, typer.Option(
        help="Autoscale up to this many on load (default: --min-replicas, no autoscaling)")] = None,
    scale_target: ScaleTargetOption = None,
    scale_down_after_s: ScaleDownAfterOption = None,
) -> None:
    """Change how many engines serve an endpoint; the stable URL answers throughout."""
    high = max_replicas if max_replicas is not None else min_replicas
    problems = replica_problems(min_replicas, high) + scaling_problems(scale_target, scale_down_after_s)
    if problems:
        for p in problems:
            err.print(f"  [red]{p.field}[/] ({p.code}): {p.message}\n      [dim]hint:[/] {p.hint}")
        raise typer.Exit(2)
    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    ep = require_endpoint(ctx, name)
    if not ctx.registry.runs.scale(ep.id, min_replicas, high, scale_target, scale_down_after_s):
        err.print(f"[red]{ep.name} is {ep.status}: only a serving endpoint can be scaled.[/]")
        raise typer.Exit(1)
    from tasks.orchestration import reconcile_now

    try:
        reconcile_now(ctx.registry, [ep.id], log=lambda _line: None)
    except Exception as exc:  # Prefect unreachable: the scheduled pass acts on the recorded intent
        err.print(f"[yellow]Recorded; the reconcile pass could not run now ({exc}): "
                  "the scheduled one applies it.[/]")
    fresh = ctx.registry.get_endpoint(ep.id)
    assert fresh is not None
    out.print(replicas_table(ctx, fresh))
