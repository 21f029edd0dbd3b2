"""`endpoints emit-finetune-completed`: fire the event a fine-tuning job fires when it is done."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inference_endpoints.cli.common import err, load_context, out, use_stack, user_errors
from inference_endpoints.settings import Settings

POLICIES = ("none", "create", "replace")


def emit_finetune_completed_cmd(
    job: Annotated[str, typer.Option(help="Fine-tuning job id")],
    checkpoint_path: Annotated[Path, typer.Option(help="Directory the job wrote")],
    endpoint: Annotated[str | None, typer.Option(help="Endpoint to create or move")] = None,
    policy: Annotated[str | None, typer.Option(
        help="none (register only), create or replace; required with --endpoint")] = None,
    base_model: Annotated[str | None, typer.Option(help="Base checkpoint of a LoRA adapter")] = None,
    checkpoint_name: Annotated[str | None, typer.Option(help="Name to register it under")] = None,
) -> None:
    """Emit `finetune.completed` exactly as a fine-tuning job would; the trigger does the rest."""
    if policy is None and endpoint:  # naming an endpoint and then doing nothing to it surprises
        err.print(f"[red]--endpoint {endpoint} needs --policy create or --policy replace[/] "
                  "(with the default, none, the checkpoint is only registered).")
        raise typer.Exit(2)
    policy = policy or "none"
    if policy not in POLICIES:
        err.print(f"[red]policy must be one of {', '.join(POLICIES)}, got {policy!r}[/]")
        raise typer.Exit(2)
    real = _checked_source(checkpoint_path)
    if not real.is_dir():
        err.print(f"[red]{checkpoint_path} is not a directory[/]")
        raise typer.Exit(2)
    settings = Settings()
    use_stack(settings)
    from prefect.events import emit_event

    payload = {"checkpoint_path": str(real), "organization": settings.org,
               "policy": policy, "endpoint": endpoint or "", "base_model": base_model or "",
               "checkpoint_name": checkpoint_name or ""}
    event = emit_event("finetune.completed", resource={"prefect.resource.id": f"finetune.job.{job}"},
                       payload=payload)
    if event is None:
        err.print("[red]The event could not be emitted (is the stack up? `endpoints status`).[/]")
        raise typer.Exit(1)
    out.print(f"emitted finetune.completed for job {job} (event {event.id}); "
              "follow it with `endpoints list` or in the Prefect UI")


def _checked_source(path: Path) -> Path:
    """The flow registers only from the organization's import roots: say so now, not in the flow."""
    from inference_endpoints.core.bounds import path_problems
    from inference_endpoints.core.errors import RequestInvalid
    from inference_endpoints.services.import_roots import check_source

    ctx = load_context()
    org = ctx.registry.get_org(ctx.org_id)
    assert org is not None
    with user_errors():
        problems = path_problems(str(path), "checkpoint_path")
        if problems:
            raise RequestInvalid(problems)
        return check_source(ctx.registry, ctx.sources, org, str(path))
