"""What every command shares: settings, the registry, the local stack, error display."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import typer
from rich.console import Console

from inference_endpoints.cli.output import Table, make_console
from inference_endpoints.core.errors import CheckpointError, RequestInvalid, StorageFull, shown
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.settings import Settings, cli_key, save_cli_key  # noqa: F401  (re-exported)

out = make_console()  # piped: as wide as its content, never cut (cli/output.py)
# Messages and errors are never wrapped by Rich: piped output (80 columns) keeps each on one line.
err = Console(stderr=True, soft_wrap=True)


@dataclass
class Context:
    settings: Settings
    registry: Registry
    org_id: str

    org_name: str = ""

    @property
    def store(self) -> LocalCheckpointStore:
        return LocalCheckpointStore(self.settings.store_root)

    @property
    def sources(self) -> SourcePolicy:
        """Where this organization may register checkpoints from (its import roots)."""
        return SourcePolicy.from_settings(self.settings)


def use_stack(settings: Settings) -> None:
    """Point Prefect clients in this process at the local stack (before any Prefect import)."""
    from inference_endpoints.localstack.stack import LocalStack

    stack = LocalStack(settings)
    state = stack.read_state()
    env = stack.env()
    if state is not None:
        env["PREFECT_API_URL"] = state.prefect_url
    for key, value in env.items():
        if key.startswith(("PREFECT_", "IE_")) and key not in os.environ:
            os.environ[key] = value


def load_context(org_name: str | None = None) -> Context:
    """Settings, the registry (migrated) and the organization acted for: `org_name`, else IE_ORG."""
    settings = Settings()
    registry = Registry(settings.db_url)
    first_key = registry.init(default_org=settings.org)
    if first_key is not None:
        save_cli_key(settings, first_key.secret)
    name = org_name or settings.org
    org = registry.get_org_by_name(name)
    if org is None:
        err.print(f"[red]No organization {shown(name)} ({'check --org' if org_name else 'set IE_ORG'}).[/]")
        raise typer.Exit(2)
    return Context(settings, registry, org.id, org.name)


def require_endpoint(ctx: Context, ref: str) -> Endpoint:
    """The organization's endpoint by name or id, or exit 2 saying there is none."""
    ep = ctx.registry.find_endpoint(ctx.org_id, ref)
    if ep is None:
        err.print(f"[red]No endpoint {ref!r}.[/]")
        raise typer.Exit(2)
    return ep


def print_problems(exc: RequestInvalid) -> None:
    err.print(f"[bold red]Rejected:[/] {len(exc.problems)} problem(s)")
    for p in exc.problems:
        err.print(f"  [red]{p.field}[/] ({p.code}): {p.message}")
        if p.hint:
            err.print(f"      [dim]hint:[/] {p.hint}")
    fit = exc.details.get("fit")
    if fit:
        err.print(fit_table(list(fit.items())))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures into a readable message and exit code 2."""
    try:
        yield
    except RequestInvalid as exc:
        print_problems(exc)
        raise typer.Exit(2) from None
    except CheckpointError as exc:
        print_problems(RequestInvalid([exc.problem]))
        raise typer.Exit(2) from None
    except StorageFull as exc:  # not the request's fault: exit 1, and nothing was kept
        print_problems(RequestInvalid([exc.problem]))
        raise typer.Exit(1) from None


def fit_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(title="Fit estimate", show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    return table

STATUS_STYLE = {
    "pending": "yellow", "deploying": "yellow", "loading": "yellow", "healthy": "green",
    "unhealthy": "red", "stopping": "yellow", "stopped": "dim", "failed": "bold red",
}
