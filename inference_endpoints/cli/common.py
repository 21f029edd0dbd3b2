"""What every command shares: settings, the registry, the local stack, error display."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import typer
from rich.console import Console
from rich.table import Table

from inference_endpoints.errors import CheckpointError, RequestInvalid
from inference_endpoints.models import Endpoint
from inference_endpoints.registry import Registry
from inference_endpoints.settings import Settings
from inference_endpoints.store import LocalCheckpointStore

out = Console()
err = Console(stderr=True)


@dataclass
class Context:
    settings: Settings
    registry: Registry
    org_id: str

    @property
    def store(self) -> LocalCheckpointStore:
        return LocalCheckpointStore(self.settings.store_root)


def use_stack(settings: Settings) -> None:
    """Point Prefect clients in this process at the local stack (before any Prefect import)."""
    from inference_endpoints.stack import LocalStack

    stack = LocalStack(settings)
    state = stack.read_state()
    env = stack.env()
    if state is not None:
        env["PREFECT_API_URL"] = state.prefect_url
    for key, value in env.items():
        if key.startswith(("PREFECT_", "IE_")) and key not in os.environ:
            os.environ[key] = value


def load_context() -> Context:
    settings = Settings()
    registry = Registry(settings.db_url)
    first_key = registry.init(default_org=settings.org)
    if first_key is not None:
        save_cli_key(settings, first_key.secret)
    org = registry.get_org_by_name(settings.org)
    if org is None:
        err.print(f"[red]No organization {settings.org!r} (set IE_ORG).[/]")
        raise typer.Exit(2)
    return Context(settings, registry, org.id)


def require_endpoint(ctx: Context, ref: str) -> Endpoint:
    """The organization's endpoint by name or id, or exit 2 saying there is none."""
    ep = ctx.registry.find_endpoint(ctx.org_id, ref)
    if ep is None:
        err.print(f"[red]No endpoint {ref!r}.[/]")
        raise typer.Exit(2)
    return ep


def save_cli_key(settings: Settings, secret: str) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.cli_key_path
    path.write_text(secret + "\n")
    path.chmod(0o600)


def cli_key(settings: Settings) -> str | None:
    """The organization key the CLI uses (IE_API_KEY, else the one the local stack stored)."""
    explicit = os.environ.get("IE_API_KEY")
    if explicit:
        return explicit
    path = settings.cli_key_path
    return path.read_text().strip() if path.exists() else None


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


def fit_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(title="Fit estimate", show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    return table




STATUS_STYLE = {
    "pending": "yellow", "deploying": "yellow", "loading": "yellow", "healthy": "green",
    "unhealthy": "red", "stopping": "yellow", "stopped": "dim", "failed": "bold red",
}
