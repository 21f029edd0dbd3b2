"""The `endpoints` command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from inference_endpoints.errors import CheckpointError, RequestInvalid
from inference_endpoints.registry import Registry
from inference_endpoints.runtime import model_root_resolver
from inference_endpoints.settings import Settings
from inference_endpoints.status import Precision, Quantization
from inference_endpoints.store import LocalCheckpointStore
from inference_endpoints.validation import CreateRequest

app = typer.Typer(no_args_is_help=True, help="Serve fine-tuned checkpoints as HTTP endpoints.")
checkpoint_app = typer.Typer(no_args_is_help=True, help="Register, list and inspect checkpoints.")
app.add_typer(checkpoint_app, name="checkpoint")

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


def load_context() -> Context:
    settings = Settings()
    registry = Registry(settings.db_url)
    registry.init(default_org=settings.org)
    org = registry.get_org_by_name(settings.org)
    if org is None:
        raise RequestInvalid([])
    return Context(settings, registry, org.id)


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


@checkpoint_app.command("make-demo")
def make_demo_cmd(
    dest: Annotated[Path, typer.Argument(help="Directory to write the demo checkpoints into")],
    steps: Annotated[int, typer.Option(help="Fine-tuning steps")] = 300,
) -> None:
    """Build the tiny demo Llama checkpoint and its LoRA adapter (offline, deterministic)."""
    from inference_endpoints.demo import make_demo

    with out.status("Building the demo checkpoint (tokenizer, fine-tune, LoRA)…"):
        demo = make_demo(dest, steps=steps)
    out.print(f"full checkpoint: [bold]{demo.full}[/]\nLoRA adapter:    [bold]{demo.lora}[/]")


@checkpoint_app.command("register")
def register_cmd(
    path: Annotated[Path, typer.Argument(help="Checkpoint directory to import")],
    name: Annotated[str, typer.Option(help="Name for the checkpoint")],
    base: Annotated[str | None, typer.Option(help="Base checkpoint of a LoRA adapter")] = None,
) -> None:
    """Inspect a checkpoint directory and import it into the checkpoint store."""
    from inference_endpoints.operations import register_checkpoint

    ctx = load_context()
    with user_errors():
        row = register_checkpoint(ctx.registry, ctx.store, ctx.org_id, path, name, base)
    out.print(f"registered [bold]{row.name}[/] as [bold]{row.id}[/] ({row.kind}, "
              f"{row.size_bytes:,} bytes, {row.digest[:19]}…)")


@checkpoint_app.command("list")
def list_checkpoints_cmd(
    all_: Annotated[bool, typer.Option("--all", help="Include deleted and reclaimed")] = False,
) -> None:
    """List this organization's checkpoints."""
    ctx = load_context()
    table = Table("id", "name", "kind", "base model", "size", "status", "created")
    for row in ctx.registry.list_checkpoints(ctx.org_id, include_deleted=all_):
        table.add_row(row.id, row.name, row.kind, row.base_model, f"{row.size_bytes:,}",
                      row.status, row.created_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@checkpoint_app.command("show")
def show_checkpoint_cmd(ref: Annotated[str, typer.Argument(help="Checkpoint id or name")]) -> None:
    """Show a checkpoint's facts and where its bytes are stored."""
    ctx = load_context()
    row = ctx.registry.find_checkpoint(ctx.org_id, ref)
    if row is None:
        err.print(f"[red]No checkpoint {ref!r} in this organization.[/]")
        raise typer.Exit(2)
    table = Table(show_header=False, title=f"checkpoint {row.name}")
    for key in ("id", "name", "kind", "base_model", "status", "digest", "size_bytes"):
        table.add_row(key, str(getattr(row, key)))
    table.add_row("storage location", str(ctx.store.path_of(row.location)))
    for key, value in sorted(json.loads(row.facts_json).items()):
        table.add_row(f"facts.{key}", str(value))
    out.print(table)


@app.command("instances")
def instances_cmd() -> None:
    """List the instance types endpoints can run on."""
    ctx = load_context()
    table = Table("name", "accelerator", "GPUs", "memory/device", "precisions", "fp8",
                  "$/hour", "work pool")
    for spec in ctx.registry.instances().values():
        table.add_row(spec.name, spec.accelerator, str(spec.gpu_count),
                      f"{spec.memory_per_device_mib / 1024:.1f} GiB",
                      ", ".join(p for p in spec.precisions if p != "auto"),
                      "yes" if spec.fp8 else "no", f"{spec.price_per_hour:.2f}", spec.work_pool)
    out.print(table)


@app.command("create")
def create_cmd(
    name: Annotated[str, typer.Argument(help="Endpoint name (a DNS label)")],
    checkpoint: Annotated[str, typer.Option(help="Checkpoint id or name")],
    instance: Annotated[str, typer.Option(help="Instance type (see `endpoints instances`)")],
    max_context: Annotated[str, typer.Option(help="Maximum context length in tokens")],
    precision: Annotated[str, typer.Option(help="auto, bfloat16, float16 or float32")] = (
        Precision.AUTO.value
    ),
    quantization: Annotated[str, typer.Option(help="none, fp8, awq, gptq, …")] = (
        Quantization.NONE.value
    ),
    dry_run: Annotated[bool, typer.Option(help="Validate and render only; deploy nothing")] = False,
) -> None:
    """Create an endpoint serving a checkpoint."""
    from inference_endpoints.operations import plan_create

    ctx = load_context()
    request = CreateRequest(name, checkpoint, instance, max_context, precision, quantization)
    with user_errors():
        plan = plan_create(ctx.registry, ctx.org_id, request,
                           model_root_resolver(ctx.settings.run_dir))
    out.print(fit_table(plan.request.fit.as_rows()))
    spec = plan.spec
    table = Table(show_header=False, title="Serving configuration")
    table.add_row("command", spec.command_line())
    for key, value in sorted(spec.env.items()):
        table.add_row(f"env {key}", value)
    for mount in spec.mounts:
        table.add_row("mount (read-only)", f"{mount.source} -> {mount.target}")
    out.print(table)
    if dry_run:
        out.print("[green]Valid.[/] Dry run: nothing was deployed.")
        return
    err.print("[red]Deploying needs the local stack; this build only supports --dry-run.[/]")
    raise typer.Exit(1)


if __name__ == "__main__":
    app()
