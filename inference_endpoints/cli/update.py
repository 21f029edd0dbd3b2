"""`endpoints update NAME --max-context N --precision P`: change a serving endpoint in place.

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
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.validation import CreateRequest, validate_create
from inference_endpoints.settings import Settings


def update_cmd(
    name: Annotated[str, typer.Argument(help="Endpoint name or id (healthy)")],
    max_context: Annotated[str | None, typer.Option(help="New maximum context length in tokens")] = None,
    precision: Annotated[str | None, typer.Option(
        help="New precision: auto, bfloat16, float16, float32")] = None,
) -> None:
    """Change an endpoint's max context or precision with a rolling replacement (no client errors)."""
    from tasks.replacements import follow_replacement, record_replacement

    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    ep = require_endpoint(ctx, name)
    with user_errors():
        if max_context is None and precision is None:
            raise RequestInvalid.single("nothing_to_update", "max_context",
                                        "Nothing to change: give --max-context and/or --precision.",
                                        f"e.g. endpoints update {ep.name} --max-context 4096")
        if ep.status != "healthy":
            raise RequestInvalid.single("endpoint_not_healthy", "endpoint",
                                        f"Endpoint {ep.name} is {ep.status}; only a healthy endpoint can "
                                        "be updated in place.",
                                        f"Wait until it is healthy, or `endpoints start {ep.name}` it first.")
    request = CreateRequest(ep.name, ep.checkpoint_id, ep.instance,
                            max_context if max_context is not None else ep.max_context,
                            precision if precision is not None else ep.precision, ep.quantization)
    with user_errors():  # every problem named before Prefect is asked anything
        validate_create(request, checkpoint=ctx.registry.checkpoint_view(ctx.org_id, ep.checkpoint_id),
                        name_taken=False, instances=ctx.registry.instances())
    api_url = os.environ.get("PREFECT_API_URL", "")
    if not prefect_answers(api_url):
        err.print(f"[red]The local stack is not running[/] (Prefect does not answer at {api_url}): "
                  "start it with `endpoints up`. Nothing was changed.")
        raise typer.Exit(1)
    changes = ", ".join(f"{k} {v}" for k, v in (("max context", max_context), ("precision", precision)) if v)
    with user_errors():
        candidate = record_replacement(ctx.registry, ep, request, None, changes)
    timeout = ctx.registry.instances()[ep.instance].startup_timeout_s + 60
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
