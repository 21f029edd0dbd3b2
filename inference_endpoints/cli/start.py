"""`endpoints start NAME`: a stopped endpoint serves again at the same URL with the same configuration.

Like `scale`, it records an intent (a new live serve run, its checkpoint leased again) and
kicks the reconciler, then follows the endpoint until it is healthy or failed. Ctrl-C stops
only the following: the scheduled reconcile pass finishes the start.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from inference_endpoints.cli.common import (
    STATUS_STYLE,
    Context,
    err,
    load_context,
    out,
    use_stack,
    user_errors,
)
from inference_endpoints.cli.create import INTERRUPTED, POLL_S, SETTLED, prefect_answers
from inference_endpoints.cli.endpoints import show_endpoint
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.settings import Settings

RECONCILE_EVERY_S = 2.0


def start_cmd(name: Annotated[str, typer.Argument(help="Endpoint name or id (stopped or failed)")]) -> None:
    """Start a stopped endpoint again: same name, URL, model name and configuration."""
    from inference_endpoints.services.operations import start_again

    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    api_url = os.environ.get("PREFECT_API_URL", "")
    if not prefect_answers(api_url):
        err.print(f"[red]The local stack is not running[/] (Prefect does not answer at {api_url}): "
                  "start it with `endpoints up`. Nothing was changed.")
        raise typer.Exit(1)
    with user_errors():
        ep = start_again(ctx.registry, ctx.org_id, name)
    try:
        ep = follow(ctx, ep)
    except KeyboardInterrupt:
        err.print(f"Stopped following. {ep.name} is still starting: `endpoints show {ep.name}`.")
        raise typer.Exit(INTERRUPTED) from None
    if ep.status == EndpointStatus.HEALTHY:
        show_endpoint(ctx, ep.id)
        return
    err.print(f"[bold red]Endpoint {ep.name} {ep.status}:[/] {ep.reason_code}: {ep.reason_message}")
    if ep.reason_hint:
        err.print(f"  hint: {ep.reason_hint}")
    raise typer.Exit(1)


def follow(ctx: Context, ep: Endpoint) -> Endpoint:
    """Kick the reconciler for this endpoint and show its phase until it settles."""
    from tasks.orchestration import reconcile_now

    started = time.monotonic()
    next_kick = 0.0
    with out.status(f"Starting {ep.name}…") as status:
        while True:
            if time.monotonic() >= next_kick:
                next_kick = time.monotonic() + RECONCILE_EVERY_S
                try:
                    reconcile_now(ctx.registry, [ep.id], log=lambda _line: None)
                except Exception as exc:  # Prefect hiccup: the next kick, or the scheduled pass, retries
                    err.print(f"[yellow]reconcile deferred: {exc}[/]")
            fresh = ctx.registry.get_endpoint(ep.id)
            if fresh is None:
                raise typer.Exit(1)
            ep = fresh
            style = STATUS_STYLE.get(ep.status, "white")
            why = f"  ·  {ep.reason_message}" if ep.reason_code and ep.reason_message else ""
            status.update(f"[{style}]{ep.status}[/] {ep.name}  ({time.monotonic() - started:.0f} s){why}")
            if EndpointStatus(ep.status) in SETTLED:
                return ep
            time.sleep(POLL_S)
