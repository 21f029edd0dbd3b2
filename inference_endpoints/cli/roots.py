"""`endpoints checkpoint roots list | add | remove`: where an organization may register checkpoints from.

Only here, in the operator's tool: neither the REST API nor the console can add a
root (an organization adding `/` would defeat the point).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from inference_endpoints.cli.common import Context, load_context, out, user_errors
from inference_endpoints.cli.output import Table
from inference_endpoints.persistence.models import Organization

roots_app = typer.Typer(no_args_is_help=True, help="List, add and remove the directories an "
                        "organization may register checkpoints from.")
OrgOption = Annotated[str | None, typer.Option("--org", help="Organization (default: IE_ORG, else default)")]


def _org(org: str | None) -> tuple[Context, Organization]:
    ctx = load_context(org)
    org_row = ctx.registry.get_org(ctx.org_id)
    assert org_row is not None  # load_context resolved it
    return ctx, org_row


@roots_app.command("list")
def list_roots_cmd(
    org: OrgOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """The organization's import roots: its drop folder, the demo cache (default org) and added ones."""
    from inference_endpoints.services.import_roots import roots_of

    ctx, org_row = _org(org)
    roots = roots_of(ctx.registry, ctx.sources, org_row)
    if as_json:
        typer.echo(json.dumps([root.to_dict() for root in roots], indent=2))
        return
    table = Table("path", "kind", "usable", title=f"import roots of {ctx.org_name}")
    for root in roots:
        usable = "yes" if root.usable else "[red]no[/] (missing, or a symlink)"
        table.add_row(str(root.path), root.kind, usable)
    out.print(table)


@roots_app.command("add")
def add_root_cmd(
    path: Annotated[str, typer.Argument(help="An existing directory (stored as its real path)")],
    org: OrgOption = None,
) -> None:
    """Let the organization register checkpoints from inside PATH."""
    from inference_endpoints.services.import_roots import add_root

    ctx, org_row = _org(org)
    with user_errors():
        real, created = add_root(ctx.registry, ctx.sources, org_row, path)
    resolved = "" if str(real) == path else f" (resolved from {path})"
    if created:
        out.print(f"added import root [bold]{real}[/]{resolved} for organization {ctx.org_name}",
                  soft_wrap=True)
    else:
        out.print(f"[bold]{real}[/]{resolved} is already an import root of {ctx.org_name}", soft_wrap=True)


@roots_app.command("remove")
def remove_root_cmd(
    path: Annotated[str, typer.Argument(help="A root added before (as `roots list` shows it)")],
    org: OrgOption = None,
) -> None:
    """Stop the organization registering from PATH (checkpoints registered from it stay)."""
    from inference_endpoints.services.import_roots import remove_root

    ctx, org_row = _org(org)
    with user_errors():
        remove_root(ctx.registry, org_row, path)
    out.print(f"removed import root [bold]{path}[/] of organization {ctx.org_name}", soft_wrap=True)
