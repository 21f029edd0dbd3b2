"""`endpoints checkpoint …` and `endpoints instances`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from inference_endpoints.cli.common import err, load_context, out, user_errors

checkpoint_app = typer.Typer(no_args_is_help=True, help="Register, list and inspect checkpoints.")


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



