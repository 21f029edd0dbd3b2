"""`endpoints up | down | status | demo`: the local stack and the main job."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inference_endpoints.cli.common import Context, cli_key, err, load_context, out, use_stack, user_errors
from inference_endpoints.cli.create import create_cmd
from inference_endpoints.cli.endpoints import stop_endpoint_by_name
from inference_endpoints.cli.output import JsonFlag, Table, print_json
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.settings import Settings

if TYPE_CHECKING:
    from inference_endpoints.localstack.stack import LocalStack

DOCKER_CACHE = Path.home() / ".cache" / "inference-endpoints" / "dockerd"
CPU_ENGINE_IMAGE = "inference-endpoints/vllm-cpu:0.32.0"


def up_cmd(
    runtime: Annotated[str, typer.Option(help="How cpu-dev engines run: process or docker")] = "process",
) -> None:
    """Start the local stack: Prefect server, workers, gateway, console, Prometheus.

    Parts that are already running (this stack's own, alive and answering) are kept;
    missing or dead ones are started again.
    """
    from inference_endpoints.localstack.stack import LocalStack

    if runtime not in ("process", "docker"):
        err.print(f"[red]--runtime must be process or docker, got {runtime!r}[/]")
        raise typer.Exit(2)
    settings = Settings()
    stack = LocalStack(settings)
    use_stack(settings)
    ctx = load_context()
    try:
        _bring_up(stack, settings, runtime)
    except _stack_errors() as exc:
        _report_failed_up(stack, exc)
        raise typer.Exit(1) from None
    _report_up(stack)
    print_status(ctx, stack)


def _stack_errors() -> tuple[type[BaseException], ...]:
    """What starting the stack raises when a part cannot start (shown as a message, not a traceback)."""
    import subprocess

    import httpx
    from prefect.exceptions import PrefectException

    # RuntimeError covers StackError/PortTaken and `prefect deploy` failing; OSError a missing binary.
    return (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError, httpx.HTTPError,
            PrefectException)


def _bring_up(stack: LocalStack, settings: Settings, runtime: str) -> None:
    from deployments.apply import apply_all
    from deployments.pools import POOLS
    from inference_endpoints.localstack.stack import ENGINE_POOL, engine_python_default

    with out.status("Starting the Prefect server…"):
        stack.start_prefect()
    with out.status("Creating work pools, blocks and deployments…"):
        apply_all(settings, engine_python_default(), stack.env())
    if runtime == "docker":
        from inference_endpoints.adapters.runtime.dockerd import dockerd_installed

        if not dockerd_installed():
            err.print("[red]dockerd is not installed here (apt-get install docker.io).[/]")
            raise typer.Exit(1)
        with out.status("Starting dockerd and building the local vLLM-CPU image "
                        "(cached; about 5 minutes the first time)…"):
            out.print(f"{ENGINE_POOL} engines run in containers (dockerd at "
                      f"{stack.use_docker(DOCKER_CACHE, CPU_ENGINE_IMAGE)})")
    else:
        previous = stack.use_process_runtime(engine_python_default())
        if previous is not None:
            out.print(f"{ENGINE_POOL} engines run as local processes again (they were set to "
                      f"Docker at {previous}; `endpoints up --runtime docker` to go back)", soft_wrap=True)
    with out.status("Starting workers, the gateway and Prometheus…"):
        for pool in POOLS:
            stack.start_worker(pool.name)
        stack.start_gateway()
        stack.start_metrics()
        stack.start_console()


def _report_up(stack: LocalStack) -> None:
    if stack.reused:
        out.print(f"kept running: {', '.join(stack.reused)}", soft_wrap=True)
        if stack.started:
            out.print(f"started: {', '.join(stack.started)}", soft_wrap=True)


def _report_failed_up(stack: LocalStack, exc: BaseException) -> None:
    from inference_endpoints.localstack.stack import PortTaken, StackError

    if isinstance(exc, PortTaken):
        err.print(f"[red]{exc}[/]")
        return
    message = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, StackError):
        message = f"{type(exc).__name__}: {message}"
    err.print(f"[red]The local stack did not start:[/] {message}")
    err.print(f"logs: {stack.settings.log_dir}; `endpoints down` stops the parts that did start")


def status_document(ctx: Context, stack: LocalStack) -> dict[str, Any]:
    """Each part of the local stack, where it is and whether it is up; `ok`: every core part is."""
    from deployments.pools import POOLS
    from inference_endpoints.adapters.processes import alive

    state = stack.read_state()
    parts: list[dict[str, Any]] = []

    def part(name: str, where: str, up: bool, core: bool) -> None:
        parts.append({"component": name, "where": where, "up": up, "core": core})

    part("Prefect server", stack.prefect_url.removesuffix("/api"), stack.prefect_healthy(), True)
    workers = dict(state.workers) if state else {}
    for pool in [p.name for p in POOLS] + [p for p in workers if p not in {q.name for q in POOLS}]:
        pid = workers.get(pool)
        part(f"worker ({pool})", f"pid {pid}" if pid else "-", alive(pid), True)
    part("gateway (stable URLs)", f"{stack.gateway_url}  ·  *.{ctx.settings.base_domain}",
         stack.gateway_healthy(), True)
    part("console and REST API", f"{stack.console_url}  ·  {stack.console_url}/openapi.json",
         stack.console_healthy(), False)
    part("Prometheus (15d retention)", (state.prometheus_url if state else None) or "-",
         bool(state and alive(state.prometheus_pid)), False)
    key = cli_key(ctx.settings)
    return {
        "ok": all(p["up"] for p in parts if p["core"]),
        "components": parts,
        "api_key": f"{key[:11]}… in {ctx.settings.cli_key_path}" if key else None,
        "registry": ctx.settings.db_url, "checkpoint_store": str(ctx.settings.store_root),
        "logs": str(ctx.settings.log_dir),
    }


def print_status(ctx: Context, stack: LocalStack, as_json: bool = False) -> bool:
    """The status table (or JSON); returns whether every core part (Prefect, workers, gateway) is up."""
    doc = status_document(ctx, stack)
    if as_json:
        print_json(doc)
        return bool(doc["ok"])
    table = Table("component", "where", "state", title="Inference Endpoints")
    for p in doc["components"]:
        table.add_row(p["component"], p["where"], _up(p["up"]))
    table.add_row("API key (CLI)", doc["api_key"] or "-", "")
    table.add_row("registry", doc["registry"], "")
    table.add_row("checkpoint store", doc["checkpoint_store"], "")
    table.add_row("logs", doc["logs"], "")
    out.print(table)
    return bool(doc["ok"])


def _up(ok: bool) -> str:
    return "[green]up[/]" if ok else "[red]down[/]"


def status_cmd(as_json: JsonFlag = False) -> None:
    """Show where the local stack's parts are and whether they are up (exit 1 if a core part is down)."""
    from inference_endpoints.localstack.stack import LocalStack

    settings = Settings()
    ctx = load_context()
    if not print_status(ctx, LocalStack(settings), as_json):
        err.print("A core part (Prefect server, a worker or the gateway) is down: `endpoints up` "
                  "starts what is missing.")
        raise typer.Exit(1)


def down_cmd() -> None:
    """Stop every running endpoint, then everything the local stack started."""
    from inference_endpoints.localstack.stack import LocalStack

    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    stack = LocalStack(settings)
    running = [ep for ep in ctx.registry.list_endpoints(ctx.org_id)
               if not EndpointStatus(ep.status).is_terminal]
    if running and stack.prefect_healthy():
        from flows.stop_endpoint import stop_endpoint

        org = ctx.registry.get_org(ctx.org_id)
        for ep in running:
            with out.status(f"Stopping endpoint {ep.name}…"):
                try:
                    stop_endpoint(endpoint=ep.id, org=org.name if org else settings.org)
                except Exception as exc:  # one endpoint must not keep the stack running; say why
                    err.print(f"[red]Could not stop endpoint {ep.name}:[/] {type(exc).__name__}: {exc}")
    elif running:
        err.print(f"Prefect is not answering, so {len(running)} endpoint(s) were not stopped "
                  f"({', '.join(ep.name for ep in running)}).")
    with out.status("Stopping workers, gateway, console, Prometheus, dockerd and the Prefect server…"):
        stopped = stack.stop()
    if stopped:
        out.print(f"[green]Local stack stopped:[/] {', '.join(stopped)}", soft_wrap=True)
    else:
        out.print("Nothing of the local stack is running.")


def demo_cmd() -> None:
    """The main job: bring the stack up, serve the demo checkpoint, and call it."""
    from inference_endpoints.localstack.demo import default_demo_dir, make_demo

    up_cmd(runtime="process")
    ctx = load_context()
    with out.status("Building the demo checkpoint (cached after the first time)…"):
        demo = make_demo(default_demo_dir())
    from inference_endpoints.services.operations import register_checkpoint

    for path, name in ((demo.full, "demo-tiny-llama"), (demo.lora, "demo-tiny-llama-lora")):
        if ctx.registry.find_checkpoint(ctx.org_id, name, available_only=True) is None:
            with user_errors():
                register_checkpoint(ctx.registry, ctx.store, ctx.org_id, path, name, sources=ctx.sources)
            out.print(f"registered checkpoint [bold]{name}[/]")
    ep = ctx.registry.find_endpoint(ctx.org_id, "demo")
    if ep is not None and ep.status != "healthy":
        stop_endpoint_by_name("demo", remove=True)
        ep = None
    if ep is None:
        create_cmd("demo", checkpoint="demo-tiny-llama", instance="cpu-dev", max_context="1024",
                   precision="float32", quantization="none", idempotency_key=None, dry_run=False,
                   startup_timeout_s=None)
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


