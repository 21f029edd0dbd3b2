"""`endpoints key create | list | revoke` and `endpoints org create`.

Keys act for the organization in IE_ORG (default `default`). A key is printed
exactly once, when it is created; only its hash is stored, and `key list` shows
the prefix. The gateway sees a new or revoked key within about a second.
"""

from __future__ import annotations

from typing import Annotated

import typer

from inference_endpoints.cli.common import err, load_context, out, user_errors
from inference_endpoints.cli.output import JsonFlag, Table, iso, minute, print_json
from inference_endpoints.core.errors import invalid
from inference_endpoints.core.validation import DNS_LABEL

key_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke organization API keys.")
org_app = typer.Typer(no_args_is_help=True, help="Create organizations.")


def _show_secret(secret: str, quiet: bool) -> None:
    if quiet:
        typer.echo(secret)
        return
    err.print("[yellow]Store it now: it is shown only this once.[/]")
    typer.echo(secret)  # plain stdout, no wrapping or markup: safe to copy or capture


@key_app.command("create")
def create_key_cmd(
    name: Annotated[str, typer.Option(help="What the key is for, e.g. `ci` or `notebook`")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the key")] = False,
) -> None:
    """Create an API key for the current organization and print it once."""
    ctx = load_context()
    new = ctx.registry.create_key(ctx.org_id, name)
    if not quiet:
        err.print(f"Created key [bold]{new.key.prefix}[/] ({name}) for organization "
                  f"[bold]{ctx.settings.org}[/].")
    _show_secret(new.secret, quiet)


@key_app.command("list")
def list_keys_cmd(as_json: JsonFlag = False) -> None:
    """List the current organization's keys (prefix only, never the key)."""
    ctx = load_context()
    rows = [{"id": key.id, "prefix": key.prefix, "name": key.name, "created_at": iso(key.created_at),
             "revoked_at": iso(key.revoked_at)} for key in ctx.registry.list_keys(ctx.org_id)]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "prefix", "name", "created", "revoked", title=f"keys of {ctx.settings.org}")
    for doc in rows:
        revoked = minute(doc["revoked_at"])
        table.add_row(doc["id"], doc["prefix"], doc["name"], minute(doc["created_at"]),
                      f"[red]{revoked}[/]" if doc["revoked_at"] else revoked)
    out.print(table)


@key_app.command("revoke")
def revoke_key_cmd(
    key: Annotated[str, typer.Argument(help="The key's prefix (ie_xxxxxxxx) or id (key_…)")],
) -> None:
    """Revoke a key: the gateway refuses it (401) within about a second."""
    ctx = load_context()
    with user_errors():
        row = ctx.registry.revoke_key(ctx.org_id, key)
    out.print(f"revoked [bold]{row.prefix}[/] ({row.name})")


@org_app.command("create")
def create_org_cmd(
    name: Annotated[str, typer.Argument(help="Organization name (a DNS label: it is part of URLs)")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the key")] = False,
) -> None:
    """Create an organization and print its first API key once."""
    ctx = load_context()
    with user_errors():
        if not DNS_LABEL.match(name):
            raise invalid("invalid_org_name", "name",
                          f"{name!r} is not a DNS label; it becomes part of endpoint URLs.",
                          "Use lowercase letters, digits and hyphens (at most 63).")
        org, first = ctx.registry.create_org(name)
    if not quiet:
        err.print(f"Created organization [bold]{org.name}[/] ({org.id}) with key "
                  f"[bold]{first.key.prefix}[/]. Act for it with IE_ORG={org.name}.")
    _show_secret(first.secret, quiet)
