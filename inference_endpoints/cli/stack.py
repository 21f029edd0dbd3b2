"""`endpoints up | down | status | demo`: the local stack and the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from inference_endpoints.cli.common import Context, cli_key, err, load_context, out, use_stack, user_errors
from inference_endpoints.cli.endpoints import create_cmd, stop_endpoint_by_name
from inference_endpoints.settings import Settings
from inference_endpoints.status import EndpointStatus

DOCKER_CACHE = Path.home() / ".cache" / "inference-endpoints" / "dockerd"
CPU_ENGINE_IMAGE = "inference-endpoints/vllm-cpu:0.32.0"


def up_cmd(
    runtime: Annotated[str, typer.Option(help="How cpu-dev engines run: process or docker")] = "process",
) -> None:
    """Start the local stack: Prefect server, workers, gateway, console, Prometheus."""
    from inference_endpoints.stack import LocalStack, engine_python_default

    if runtime not in ("process", "docker"):
        err.print(f"[red]--runtime must be process or docker, got {runtime!r}[/]")
        raise typer.Exit(2)
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
    if runtime == "docker":
        from inference_endpoints.runtime.dockerd import dockerd_installed

        if not dockerd_installed():
            err.print("[red]dockerd is not installed here (apt-get install docker.io).[/]")
            raise typer.Exit(1)
        with out.status("Starting dockerd and building the local vLLM-CPU image "
                        "(cached; about 5 minutes the first time)…"):
            out.print(f"cpu-dev engines run in containers (dockerd at "
                      f"{stack.use_docker(DOCKER_CACHE, CPU_ENGINE_IMAGE)})")
    with out.status("Starting workers, the gateway and Prometheus…"):
        for pool in POOLS:
            stack.start_worker(pool.name)
        stack.start_gateway()
        stack.start_metrics()
        stack.start_console()
    print_status(ctx, stack)


def print_status(ctx: Context, stack: object) -> None:
    from inference_endpoints.processes import alive
    from inference_endpoints.stack import LocalStack

    assert isinstance(stack, LocalStack)
    state = stack.read_state()
    table = Table("component", "where", "state", title="Inference Endpoints")
    prefect_ok = stack.prefect_healthy()
    table.add_row("Prefect server", stack.prefect_url.removesuffix("/api"),
                  "[green]up[/]" if prefect_ok else "[red]down[/]")
    for pool, pid in (state.workers if state else {}).items():
        table.add_row(f"worker ({pool})", f"pid {pid}",
                      "[green]up[/]" if alive(pid) else "[red]down[/]")
    table.add_row("gateway (stable URLs)", f"{stack.gateway_url}  ·  *.{ctx.settings.base_domain}",
                  "[green]up[/]" if stack.gateway_healthy() else "[red]down[/]")
    table.add_row("console and REST API", f"{stack.console_url}  ·  {stack.console_url}/openapi.json",
                  "[green]up[/]" if stack.console_healthy() else "[red]down[/]")
    prom = state.prometheus_url if state else None
    table.add_row("Prometheus (15d retention)", prom or "-",
                  "[green]up[/]" if state and alive(state.prometheus_pid) else "[red]down[/]")
    key = cli_key(ctx.settings)
    table.add_row("API key (CLI)", f"{key[:11]}… in {ctx.settings.cli_key_path}" if key else "-", "")
    table.add_row("registry", ctx.settings.db_url, "")
    table.add_row("checkpoint store", str(ctx.settings.store_root), "")
    table.add_row("logs", str(ctx.settings.log_dir), "")
    out.print(table)


def status_cmd() -> None:
    """Show where the local stack's parts are and whether they are up."""
    from inference_endpoints.stack import LocalStack

    settings = Settings()
    ctx = load_context()
    print_status(ctx, LocalStack(settings))


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
    with out.status("Stopping workers, gateway, console, Prometheus, dockerd and the Prefect server…"):
        stack.stop()
    out.print("[green]Local stack stopped.[/]")


def demo_cmd() -> None:
    """The main job: bring the stack up, serve the demo checkpoint, and call it."""
    from inference_endpoints.demo import default_demo_dir, make_demo

    up_cmd(runtime="process")
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
        stop_endpoint_by_name("demo", remove=True)
        ep = None
    if ep is None:
        create_cmd("demo", checkpoint="demo-tiny-llama", instance="cpu-dev", max_context="1024",
                   precision="float32", quantization="none", idempotency_key=None, dry_run=False)
    ep = ctx.registry.find_endpoint(ctx.org_id, "demo")
    assert ep is not None
    from openai import OpenAI

    from inference_endpoints.urls import endpoint_urls

    urls = endpoint_urls("demo", ctx.settings.org, ctx.settings)
    client = OpenAI(base_url=f"{urls.path_url}/v1", api_key=cli_key(ctx.settings) or "", max_retries=2)
    prompt = "A checkpoint becomes an endpoint when"
    completion = client.completions.create(model="demo", prompt=prompt, max_tokens=24)
    text = completion.choices[0].text
    out.print(f"\n[bold]completion[/] through the gateway at {urls.path_url}/v1:\n  {prompt}[cyan]{text}[/]")
    out.print("\nNext: `endpoints list`, `endpoints show demo`, `endpoints stop demo`, "
              "`endpoints down`.")


