"""The `endpoints` command line."""

from __future__ import annotations

import json
import os
import threading
import time
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
from inference_endpoints.status import EndpointStatus, Precision, Quantization
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



@app.command("up")
def up_cmd() -> None:
    """Start the local stack: Prefect server, workers, blocks and deployments."""
    from inference_endpoints.stack import LocalStack, engine_python_default

    settings = Settings()
    stack = LocalStack(settings)
    use_stack(settings)
    ctx = load_context()
    with out.status("Starting the Prefect server…"):
        stack.start_prefect()
    with out.status("Creating work pools, blocks and deployments…"):
        from deployments.apply import apply_all
        from deployments.pools import POOLS

        apply_all(settings, engine_python_default(), stack.env())
    with out.status("Starting workers…"):
        for pool in POOLS:
            stack.start_worker(pool.name)
    print_status(ctx, stack)


def print_status(ctx: Context, stack: object) -> None:
    from inference_endpoints.stack import LocalStack, pid_alive

    assert isinstance(stack, LocalStack)
    state = stack.read_state()
    table = Table("component", "where", "state", title="Inference Endpoints")
    prefect_ok = stack.prefect_healthy()
    table.add_row("Prefect server", stack.prefect_url.removesuffix("/api"),
                  "[green]up[/]" if prefect_ok else "[red]down[/]")
    for pool, pid in (state.workers if state else {}).items():
        table.add_row(f"worker ({pool})", f"pid {pid}",
                      "[green]up[/]" if pid_alive(pid) else "[red]down[/]")
    table.add_row("registry", ctx.settings.db_url, "")
    table.add_row("checkpoint store", str(ctx.settings.store_root), "")
    table.add_row("logs", str(ctx.settings.log_dir), "")
    out.print(table)


@app.command("status")
def status_cmd() -> None:
    """Show where the local stack's parts are and whether they are up."""
    from inference_endpoints.stack import LocalStack

    settings = Settings()
    ctx = load_context()
    print_status(ctx, LocalStack(settings))


@app.command("down")
def down_cmd() -> None:
    """Stop every running endpoint, then the workers and the Prefect server."""
    from inference_endpoints.stack import LocalStack

    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    stack = LocalStack(settings)
    if stack.prefect_healthy():
        from flows.stop_endpoint import stop_endpoint

        org = ctx.registry.get_org(ctx.org_id)
        for ep in ctx.registry.list_endpoints(ctx.org_id):
            if not EndpointStatus(ep.status).is_terminal:
                with out.status(f"Stopping endpoint {ep.name}…"):
                    stop_endpoint(endpoint=ep.id, org=org.name if org else settings.org)
    with out.status("Stopping workers and the Prefect server…"):
        stack.stop()
    out.print("[green]Local stack stopped.[/]")


STATUS_STYLE = {
    "pending": "yellow", "deploying": "yellow", "loading": "yellow", "healthy": "green",
    "unhealthy": "red", "stopping": "yellow", "stopped": "dim", "failed": "bold red",
}


def _phase_line(ctx: Context, endpoint_id: str, started: float) -> str:
    ep = ctx.registry.get_endpoint(endpoint_id)
    if ep is None:
        return "recording…"
    style = STATUS_STYLE.get(ep.status, "white")
    return f"[{style}]{ep.status}[/] {ep.name}  ({time.monotonic() - started:.0f} s)"


@app.command("create")
def create_cmd(
    name: Annotated[str, typer.Argument(help="Endpoint name (a DNS label)")],
    checkpoint: Annotated[str, typer.Option(help="Checkpoint id or name")],
    instance: Annotated[str, typer.Option(help="Instance type (see `endpoints instances`)")] = (
        "cpu-dev"
    ),
    max_context: Annotated[str, typer.Option(help="Maximum context length in tokens")] = "2048",
    precision: Annotated[str, typer.Option(help="auto, bfloat16, float16 or float32")] = (
        Precision.AUTO.value
    ),
    quantization: Annotated[str, typer.Option(help="none, fp8, awq, gptq, …")] = (
        Quantization.NONE.value
    ),
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate and render only; deploy nothing")] = False,
) -> None:
    """Create an endpoint serving a checkpoint and wait until it is healthy."""
    from inference_endpoints.operations import plan_create

    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    request = CreateRequest(name, checkpoint, instance, max_context, precision, quantization)
    with user_errors():
        plan = plan_create(ctx.registry, ctx.org_id, request,
                           model_root_resolver(ctx.settings.run_dir / "engines"))
    if dry_run:
        out.print(fit_table(plan.request.fit.as_rows()))
        out.print(config_table(plan.spec))
        out.print("[green]Valid.[/] Dry run: nothing was deployed.")
        return
    from flows.create_endpoint import create_endpoint

    org = ctx.registry.get_org(ctx.org_id)
    assert org is not None
    started = time.monotonic()
    done = threading.Event()
    status = out.status(f"Creating {name}…")

    def follow() -> None:
        while not done.wait(0.5):
            ep = ctx.registry.find_endpoint(ctx.org_id, name)
            if ep is not None:
                status.update(_phase_line(ctx, ep.id, started))

    watcher = threading.Thread(target=follow, daemon=True)
    with status:
        watcher.start()
        try:
            create_endpoint(name=name, checkpoint=checkpoint, instance=instance,
                            max_context=int(max_context), precision=Precision(precision),
                            quantization=Quantization(quantization), org=org.name,
                            idempotency_key=idempotency_key)
        except Exception:  # the registry holds the reason; shown below
            pass
        finally:
            done.set()
    ep = ctx.registry.find_endpoint(ctx.org_id, name)
    if ep is None or ep.status != "healthy":
        reason = f"{ep.reason_code}: {ep.reason_message}\n  hint: {ep.reason_hint}" if ep else ""
        err.print(f"[bold red]Endpoint {name} failed[/] {reason}")
        raise typer.Exit(1)
    show_endpoint(ctx, ep.id)


def config_table(spec: object) -> Table:
    from inference_endpoints.serving_config import ServingSpec

    assert isinstance(spec, ServingSpec)
    table = Table(show_header=False, title="Serving configuration")
    table.add_row("command", spec.command_line())
    for key, value in sorted(spec.env.items()):
        table.add_row(f"env {key}", value)
    for mount in spec.mounts:
        table.add_row("mount (read-only)", f"{mount.source} -> {mount.target}")
    return table


def show_endpoint(ctx: Context, endpoint_id: str) -> None:
    from inference_endpoints.serving_config import ServingSpec
    from inference_endpoints.urls import endpoint_urls

    ep = ctx.registry.get_endpoint(endpoint_id)
    assert ep is not None
    org = ctx.registry.get_org(ep.org_id)
    urls = endpoint_urls(ep.name, org.name if org else ep.org_id, ctx.settings)
    table = Table(show_header=False, title=f"endpoint {ep.name}")
    style = STATUS_STYLE.get(ep.status, "white")
    table.add_row("status", f"[{style}]{ep.status}[/]")
    if ep.reason_code:
        table.add_row("reason", f"{ep.reason_code}: {ep.reason_message}")
        table.add_row("hint", ep.reason_hint or "")
    table.add_row("url", urls.url)
    table.add_row("backend (internal)", ep.backend_url or "-")
    table.add_row("model name", ep.served_model_name)
    table.add_row("checkpoint", ep.checkpoint_id)
    table.add_row("instance", ep.instance)
    table.add_row("max context / precision / quantization",
                  f"{ep.max_context} / {ep.precision} / {ep.quantization}")
    table.add_row("serve run", ep.serve_run_id or "-")
    for label, ts in (("requested", ep.created_at), ("scheduled", ep.scheduled_at),
                      ("loading", ep.loading_at), ("healthy", ep.healthy_at),
                      ("ended", ep.ended_at)):
        if ts is not None:
            table.add_row(label, ts.strftime("%H:%M:%S"))
    out.print(table)
    out.print(config_table(ServingSpec.from_json(ep.serving_config_json)))
    events = Table("time", "event", "reason", "message", title="activity")
    for ev in ctx.registry.activity(ep.id):
        change = f"{ev.from_status or ''} → {ev.to_status}" if ev.to_status else ev.kind
        events.add_row(ev.at.strftime("%H:%M:%S"), change, ev.reason_code or "",
                       ev.message.splitlines()[0] if ev.message else "")
    out.print(events)


@app.command("list")
def list_cmd() -> None:
    """List this organization's endpoints."""
    ctx = load_context()
    table = Table("name", "status", "model", "instance", "url", "created")
    for ep in ctx.registry.list_endpoints(ctx.org_id):
        ckpt = ctx.registry.find_checkpoint(ctx.org_id, ep.checkpoint_id)
        style = STATUS_STYLE.get(ep.status, "white")
        from inference_endpoints.urls import endpoint_urls

        org = ctx.registry.get_org(ep.org_id)
        table.add_row(ep.name, f"[{style}]{ep.status}[/]",
                      f"{ckpt.base_model if ckpt else '?'} / {ckpt.name if ckpt else '?'}",
                      ep.instance, endpoint_urls(ep.name, org.name if org else "?").url,
                      ep.created_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@app.command("show")
def show_cmd(name: Annotated[str, typer.Argument(help="Endpoint name or id")]) -> None:
    """Show an endpoint: status, URL, serving configuration, activity."""
    ctx = load_context()
    ep = ctx.registry.find_endpoint(ctx.org_id, name)
    if ep is None:
        err.print(f"[red]No endpoint {name!r}.[/]")
        raise typer.Exit(2)
    show_endpoint(ctx, ep.id)


def _stop(name: str, remove: bool) -> str:
    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    ep = ctx.registry.find_endpoint(ctx.org_id, name)
    if ep is None:
        err.print(f"[red]No endpoint {name!r}.[/]")
        raise typer.Exit(2)
    from flows.stop_endpoint import stop_endpoint

    org = ctx.registry.get_org(ctx.org_id)
    with out.status(f"Stopping {name}…"), user_errors():
        return str(stop_endpoint(endpoint=ep.id, org=org.name if org else settings.org,
                                 remove=remove))


@app.command("stop")
def stop_cmd(name: Annotated[str, typer.Argument(help="Endpoint name or id")]) -> None:
    """Stop an endpoint; its checkpoint lease is released once it is confirmed gone."""
    out.print(f"{name}: {_stop(name, remove=False)}")


@app.command("rm")
def rm_cmd(name: Annotated[str, typer.Argument(help="Endpoint name or id")]) -> None:
    """Stop an endpoint if needed, then remove its record (freeing the name)."""
    out.print(f"{name}: {_stop(name, remove=True)}")


@app.command("demo")
def demo_cmd() -> None:
    """The main job: bring the stack up, serve the demo checkpoint, and call it."""
    import httpx

    from inference_endpoints.demo import default_demo_dir, make_demo

    up_cmd()
    ctx = load_context()
    with out.status("Building the demo checkpoint (cached after the first time)…"):
        demo = make_demo(default_demo_dir())
    from inference_endpoints.operations import register_checkpoint

    for path, name in ((demo.full, "demo-tiny-llama"), (demo.lora, "demo-tiny-llama-lora")):
        if ctx.registry.find_checkpoint(ctx.org_id, name, available_only=True) is None:
            with user_errors():
                register_checkpoint(ctx.registry, ctx.store, ctx.org_id, path, name)
            out.print(f"registered checkpoint [bold]{name}[/]")
    ep = ctx.registry.find_endpoint(ctx.org_id, "demo")
    if ep is not None and ep.status != "healthy":
        _stop("demo", remove=True)
        ep = None
    if ep is None:
        create_cmd("demo", checkpoint="demo-tiny-llama", instance="cpu-dev", max_context="1024",
                   precision="float32", quantization="none", idempotency_key=None, dry_run=False)
    ep = ctx.registry.find_endpoint(ctx.org_id, "demo")
    assert ep is not None and ep.backend_url
    prompt = "A checkpoint becomes an endpoint when"
    response = httpx.post(f"{ep.backend_url}/v1/completions",
                          headers={"Authorization": f"Bearer {ep.backend_api_key}"},
                          json={"model": ep.served_model_name, "prompt": prompt, "max_tokens": 24},
                          timeout=60)
    response.raise_for_status()
    text = response.json()["choices"][0]["text"]
    out.print(f"\n[bold]completion[/] from endpoint demo:\n  {prompt}[cyan]{text}[/]")
    out.print("\nNext: `endpoints list`, `endpoints show demo`, `endpoints stop demo`, "
              "`endpoints down`.")


if __name__ == "__main__":
    app()
