"""`endpoints update NAME [--max-context N] [--precision P] [--instance I]`: change it in place.

A rolling replacement (as after fine-tuning): a new engine with the new settings comes up
beside the old one, the stable URL switches to it once it generates, then the old one drains
and stops; callers see no errors. Validated like a create first (nothing is written on a
bad value); Ctrl-C stops only the following, the reconciler finishes the switch.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from inference_endpoints.cli.common import err, load_context, out, require_endpoint, use_stack, user_errors
from inference_endpoints.cli.create import INTERRUPTED, prefect_answers
from inference_endpoints.cli.endpoints import show_endpoint
from inference_endpoints.core.validation import validate_create
from inference_endpoints.settings import Settings


def update_cmd(
    name: Annotated[str, typer.Argument(help="Endpoint name or id (healthy)")],
    max_context: Annotated[str | None, typer.Option(help="New maximum context length in tokens")] = None,
    precision: Annotated[str | None, typer.Option(
        help="New precision: auto, bfloat16, float16, float32")] = None,
    instance: Annotated[str | None, typer.Option(
        help="New instance type (`endpoints instances`); the new engine starts on its pool")] = None,
) -> None:
    """Change max context, precision or instance with a rolling replacement (no client errors)."""
    from inference_endpoints.services.replacements import plan_update
    from tasks.replacements import follow_replacement, record_replacement

    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    ep = require_endpoint(ctx, name)
    with user_errors():
        plan = plan_update(ep, max_context=max_context, precision=precision, instance=instance)
    request, changes = plan.request, plan.changes
    with user_errors():  # every problem named before Prefect is asked anything
        validate_create(request, checkpoint=ctx.registry.checkpoint_view(ctx.org_id, ep.checkpoint_id),
                        name_taken=False, instances=ctx.registry.instances())
    api_url = os.environ.get("PREFECT_API_URL", "")
    if not prefect_answers(api_url):
        err.print(f"[red]The local stack is not running[/] (Prefect does not answer at {api_url}): "
                  "start it with `endpoints up`. Nothing was changed.")
        raise typer.Exit(1)
    with user_errors():
        candidate = record_replacement(ctx.registry, ep, request, None, changes)
    timeout = ctx.registry.instances()[str(request.instance)].startup_timeout_s + 60
    try:
        with out.status(f"Updating {ep.name} ({changes})…") as status:
            done = follow_replacement(ctx.registry, ep, candidate, timeout, log=lambda _line: None,
                                      progress=lambda phase: status.update(
                                          f"Updating {ep.name} ({changes}): new engine {phase}"))
    except KeyboardInterrupt:
        err.print(f"Stopped following. The reconciler finishes updating {ep.name}: "
                  f"`endpoints show {ep.name}`.")
        raise typer.Exit(INTERRUPTED) from None
    except RuntimeError as exc:
        err.print(f"[bold red]Not updated:[/] {exc}.")
        fresh = ctx.registry.get_endpoint(ep.id)
        last = next((a for a in ctx.registry.activity(ep.id) if a.kind == "replacement_abandoned"), None)
        if last is not None:
            err.print(f"  why: {last.message}")
        if fresh is not None:
            err.print(f"  {ep.name} is {fresh.status} with its previous settings.")
        raise typer.Exit(1) from None
    if not done:
        err.print(f"[yellow]{ep.name}'s update is still under way; the reconciler finishes it "
                  f"(`endpoints show {ep.name}`).[/]")
        raise typer.Exit(1)
    show_endpoint(ctx, ep.id)
