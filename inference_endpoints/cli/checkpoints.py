"""`endpoints checkpoint …` and `endpoints instances`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from inference_endpoints.cli.common import err, load_context, out, user_errors
from inference_endpoints.cli.output import JsonFlag, Table, minute, print_json
from inference_endpoints.cli.roots import roots_app

checkpoint_app = typer.Typer(no_args_is_help=True, help="Register, list and inspect checkpoints.")
checkpoint_app.add_typer(roots_app, name="roots")


@checkpoint_app.command("make-demo")
def make_demo_cmd(
    dest: Annotated[Path, typer.Argument(help="Directory to write the demo checkpoints into")],
    steps: Annotated[int, typer.Option(help="Fine-tuning steps")] = 300,
) -> None:
    """Build the tiny demo Llama checkpoint and its LoRA adapter (offline, deterministic)."""
    from inference_endpoints.localstack.demo import make_demo

    with out.status("Building the demo checkpoint (tokenizer, fine-tune, LoRA)…"):
        demo = make_demo(dest, steps=steps)
    out.print(f"full checkpoint: [bold]{demo.full}[/]\nLoRA adapter:    [bold]{demo.lora}[/]")


@checkpoint_app.command("register")
def register_cmd(
    path: Annotated[Path, typer.Argument(help="Checkpoint directory, inside one of the organization's "
                                         "import roots (`endpoints checkpoint roots list`)")],
    name: Annotated[str, typer.Option(help="Name for the checkpoint")],
    base: Annotated[str | None, typer.Option(help="Base checkpoint of a LoRA adapter")] = None,
) -> None:
    """Inspect a checkpoint directory and import it into the checkpoint store."""
    from inference_endpoints.services.operations import register_checkpoint

    ctx = load_context()
    with user_errors():
        row = register_checkpoint(ctx.registry, ctx.store, ctx.org_id, path, name, base, sources=ctx.sources)
    out.print(f"registered [bold]{row.name}[/] as [bold]{row.id}[/] ({row.kind}, "
              f"{row.size_bytes:,} bytes, {row.digest[:19]}…)")


@checkpoint_app.command("list")
def list_checkpoints_cmd(
    all_: Annotated[bool, typer.Option("--all", help="Include deleted and reclaimed")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List this organization's checkpoints, with the endpoints holding each one."""
    from inference_endpoints.cli.documents import checkpoint_document
    from inference_endpoints.persistence.checkpoint_lifecycle import list_with_holders

    ctx = load_context()
    rows = []
    for row, holders in list_with_holders(ctx.registry, ctx.org_id, include_deleted=all_):
        if row.status in ("reclaiming", "reclaimed"):
            holders = []  # the bytes are gone or going: a crashed run's open lease holds nothing
        rows.append(checkpoint_document(ctx, row, held_by=[h.label() for h in holders]))
    if as_json:
        print_json(rows)
        return
    table = Table("id", "name", "kind", "base model", "size", "status", "held by", "created")
    for doc in rows:
        style = CHECKPOINT_STYLE.get(doc["status"], "white")
        table.add_row(doc["id"], doc["name"], doc["kind"], doc["base_model"], f"{doc['size_bytes']:,}",
                      f"[{style}]{doc['status']}[/]", ", ".join(doc["held_by"]) or "-",
                      minute(doc["created_at"]))
    out.print(table)


@checkpoint_app.command("delete")
def delete_checkpoint_cmd(ref: Annotated[str, typer.Argument(help="Checkpoint id or name")]) -> None:
    """Delete a checkpoint record now; its bytes are reclaimed once no endpoint run can read them."""
    from inference_endpoints.persistence.checkpoint_lifecycle import delete_checkpoint

    ctx = load_context()
    with user_errors():
        answer = delete_checkpoint(ctx.registry, ctx.org_id, ref)
    out.print(answer.message())
    if answer.held:
        table = Table("endpoint", "status", "serve run", title="held by")
        for h in answer.holders:
            table.add_row(h.endpoint_name, h.endpoint_status or "removed", h.flow_run_id or "-")
        out.print(table)


@checkpoint_app.command("show")
def show_checkpoint_cmd(ref: Annotated[str, typer.Argument(help="Checkpoint id or name")],
                        as_json: JsonFlag = False) -> None:
    """Show a checkpoint's facts and where its bytes are stored."""
    from inference_endpoints.cli.documents import checkpoint_detail

    ctx = load_context()
    row = ctx.registry.find_checkpoint(ctx.org_id, ref)
    if row is None:
        err.print(f"[red]No checkpoint {ref!r} in this organization.[/]")
        raise typer.Exit(2)
    doc = checkpoint_detail(ctx, row)
    if as_json:
        print_json(doc)
        return
    table = Table(show_header=False, title=f"checkpoint {row.name}")
    for key in ("id", "name", "kind", "base_model", "status", "digest", "size_bytes"):
        table.add_row(key, str(doc[key]))
    table.add_row("storage location", doc["storage_location"])
    for key, value in sorted(doc["facts"].items()):
        table.add_row(f"facts.{key}", str(value))
    out.print(table)


def instances_cmd(as_json: JsonFlag = False) -> None:
    """List the instance types endpoints can run on."""
    from inference_endpoints.cli.documents import instance_document

    ctx = load_context()
    rows = [instance_document(spec) for spec in ctx.registry.instances().values()]
    if as_json:
        print_json(rows)
        return
    table = Table("name", "accelerator", "GPUs", "memory/device", "precisions", "fp8",
                  "$/hour", "work pool")
    for doc in rows:
        table.add_row(doc["name"], doc["accelerator"], str(doc["gpu_count"]),
                      f"{doc['memory_per_device_mib'] / 1024:.1f} GiB", ", ".join(doc["precisions"]),
                      "yes" if doc["fp8"] else "no", f"{doc['price_per_hour']:.2f}", doc["work_pool"])
    out.print(table)


def gc_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and report only; delete nothing")] = False,
) -> None:
    """Collect checkpoint garbage now: reclaim deleted checkpoints no endpoint run can still read."""
    import httpx

    from inference_endpoints.cli.common import use_stack
    from inference_endpoints.settings import Settings

    use_stack(Settings())
    load_context()  # migrate and check the org before Prefect is involved
    from flows.collect_garbage import collect_checkpoint_garbage

    try:
        with out.status("Collecting checkpoint garbage…"):
            report = collect_checkpoint_garbage(dry_run=dry_run)
    except (httpx.HTTPError, RuntimeError) as exc:  # Prefect raises RuntimeError("Failed to reach API")
        err.print(f"[red]The collection could not run: {exc}[/]\nIs the stack up? (`endpoints up`)")
        raise typer.Exit(1) from None
    print_gc_report(report)
    if report.get("prefect_error"):
        raise typer.Exit(1)


def print_gc_report(report: dict[str, Any]) -> None:
    title = "garbage collection (dry run)" if report["dry_run"] else "garbage collection"
    table = Table("checkpoint", "id", "result", "bytes freed", "detail", title=title)
    for row in report["rows"]:
        style = GC_STYLE.get(row["result"], "white")
        table.add_row(row["checkpoint"], row["id"], f"[{style}]{row['result']}[/]",
                      f"{int(row['bytes freed']):,}", row["detail"])
    out.print(table)
    counts = report["counts"]
    out.print(f"{counts['reclaimed']} reclaimed ({report['bytes_freed']:,} bytes freed), "
              f"{counts['would reclaim']} would be reclaimed, {counts['held']} held, "
              f"{counts['skipped']} skipped.")
    if report.get("deferred"):
        out.print(f"{report['deferred']} more deleted checkpoints wait for the next collection.")
    if report.get("prefect_error"):
        err.print(f"[bold red]Prefect unreachable, nothing reclaimed:[/] {report['prefect_error']}")


CHECKPOINT_STYLE = {"available": "green", "deleted": "yellow", "reclaiming": "yellow",
                    "reclaimed": "dim"}
GC_STYLE = {"reclaimed": "green", "would reclaim": "cyan", "held": "yellow", "skipped": "red"}
