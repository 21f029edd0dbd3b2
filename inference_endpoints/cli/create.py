"""`endpoints create`: validate here, then submit `create-endpoint/create` to Prefect and follow it.

The create flow runs on the control-plane work pool, not in this process: closing the
terminal or pressing Ctrl-C stops only the following, and the endpoint still ends
healthy or failed with a reason. Validation runs here first, so a bad request is
rejected with every problem before anything is submitted.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inference_endpoints import deployment_names
from inference_endpoints.adapters.runtime import model_root_resolver
from inference_endpoints.cli.common import (
    STATUS_STYLE,
    Context,
    err,
    fit_table,
    load_context,
    out,
    use_stack,
    user_errors,
)
from inference_endpoints.cli.endpoints import config_table, show_endpoint
from inference_endpoints.cli.output import ScaleDownAfterOption, ScaleTargetOption
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.replica_counts import replica_problems, scaling_problems
from inference_endpoints.core.status import EndpointStatus, Precision, Quantization
from inference_endpoints.core.validation import DEFAULT_INSTANCE, DEFAULT_MAX_CONTEXT, CreateRequest
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.settings import Settings

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

CREATE_DEPLOYMENT = deployment_names.CREATE
POLL_S = 0.5
RUN_STATE_EVERY_S = 1.0
# Where following ends: the endpoint is serving, or nothing will change it any more.
SETTLED = {EndpointStatus.HEALTHY, EndpointStatus.FAILED, EndpointStatus.STOPPED, EndpointStatus.STOPPING}
INTERRUPTED = 130  # the shell's code for "ended by SIGINT"


class SubmitFailed(Exception):
    """Prefect did not take the create run."""


def create_cmd(
    name: Annotated[str, typer.Argument(help="Endpoint name (a DNS label)")],
    checkpoint: Annotated[str, typer.Option(help="Checkpoint id or name")],
    instance: Annotated[str, typer.Option(help="Instance type (see `endpoints instances`)")] = (
        DEFAULT_INSTANCE
    ),
    max_context: Annotated[str, typer.Option(help="Maximum context length in tokens")] = str(
        DEFAULT_MAX_CONTEXT),
    precision: Annotated[str, typer.Option(help="auto, bfloat16, float16 or float32")] = (
        Precision.AUTO.value
    ),
    quantization: Annotated[str, typer.Option(help="none, fp8, awq, gptq, …")] = (
        Quantization.NONE.value
    ),
    idempotency_key: Annotated[str | None, typer.Option(
        help="Retry-safe key: the same key gives the same endpoint (default: a new one per call)")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate and render only; deploy nothing")] = False,
    startup_timeout_s: Annotated[int | None, typer.Option(
        "--startup-timeout-s", help="Override the instance's startup timeout (seconds)")] = None,
    min_replicas: Annotated[int, typer.Option(help="Engines kept serving (1 to 8)")] = 1,
    max_replicas: Annotated[int | None, typer.Option(
        help="Autoscale up to this many on load (default: --min-replicas)")] = None,
    scale_target: ScaleTargetOption = None,
    scale_down_after_s: ScaleDownAfterOption = None,
) -> None:
    """Create an endpoint serving a checkpoint and follow it until it is healthy (Ctrl-C stops following)."""
    from inference_endpoints.services.operations import plan_create

    replicas_max = max_replicas if max_replicas is not None else min_replicas
    settings = Settings()
    use_stack(settings)
    ctx = load_context()
    retried = (ctx.registry.find_by_idempotency_key(ctx.org_id, idempotency_key)
               if idempotency_key else None)
    if retried is not None:  # a retry of an accepted request is not validated again (its name is taken)
        name = retried.name
    else:
        request = CreateRequest(name, checkpoint, instance, max_context, precision, quantization)
        with user_errors():
            problems = replica_problems(min_replicas, replicas_max) + scaling_problems(
                scale_target, scale_down_after_s)
            if problems:
                raise RequestInvalid(problems)
            plan = plan_create(ctx.registry, ctx.org_id, request,
                               model_root_resolver(ctx.settings.run_dir / "engines"))
        if dry_run:
            out.print(fit_table(plan.request.fit.as_rows()))
            out.print(config_table(plan.spec))
            out.print("[green]Valid.[/] Dry run: nothing was deployed.")
            return
    api_url = os.environ.get("PREFECT_API_URL", "")
    if not prefect_answers(api_url):
        err.print(f"[red]The local stack is not running[/] (Prefect does not answer at {api_url}): "
                  "start it with `endpoints up`. Nothing was created.")
        raise typer.Exit(1)
    org = ctx.registry.get_org(ctx.org_id)
    assert org is not None
    key = idempotency_key or f"cli-{uuid.uuid4().hex}"
    parameters: dict[str, Any] = {
        "name": name, "checkpoint": checkpoint, "instance": instance, "max_context": int(max_context),
        "precision": Precision(precision).value, "quantization": Quantization(quantization).value,
        "org": org.name, "idempotency_key": key, "startup_timeout_s": startup_timeout_s,
        "min_replicas": min_replicas, "max_replicas": replicas_max,
        "scale_target": scale_target, "scale_down_after_s": scale_down_after_s,
    }
    try:
        run_id = submit(parameters, key)
    except SubmitFailed as exc:
        err.print(f"[red]Prefect did not take the create run:[/] {exc}")
        err.print("  hint: `endpoints up` creates the deployments and starts the workers.")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(f"Interrupted while submitting; `endpoints show {name}` shows whether it was created.")
        raise typer.Exit(INTERRUPTED) from None
    try:
        outcome = follow(ctx, name, run_id)
    except KeyboardInterrupt:
        err.print(f"Stopped following. {name} is still being created by Prefect (flow run {run_id}).")
        err.print(f"  watch it: endpoints show {name}")
        err.print(f"  stop it:  endpoints stop {name}")
        raise typer.Exit(INTERRUPTED) from None
    finish(ctx, name, outcome)


def prefect_answers(api_url: str) -> bool:
    import httpx

    if not api_url:
        return False
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def submit(parameters: dict[str, Any], key: str) -> str:
    """`create-endpoint/create` as a deployment run of its own (not a subflow of this process)."""
    import httpx
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectException

    # Parameters left out take the flow's own defaults (and a flow that dropped one still runs).
    given = {k: v for k, v in parameters.items() if v is not None}
    try:
        run = run_deployment(CREATE_DEPLOYMENT, parameters=given, timeout=0, as_subflow=False,
                             idempotency_key=key, flow_run_name=f"create/{given['org']}/{given['name']}",
                             tags=["inference-endpoints", "cli"])
    except (httpx.HTTPError, PrefectException, RuntimeError) as exc:  # server gone, no deployment
        raise SubmitFailed(f"{type(exc).__name__}: {exc}") from exc
    return str(run.id)  # type: ignore[union-attr]


@dataclass
class Outcome:
    endpoint: Endpoint | None
    state: State | None  # the create flow run's last state seen (None: Prefect did not answer)


def follow(ctx: Context, name: str, run_id: str) -> Outcome:
    """Show the phases from the registry and the create run's state until one of them settles."""
    started = time.monotonic()
    state: State | None = None
    next_state_check = 0.0
    with out.status(f"Creating {name}… (submitted as flow run {run_id})") as status:
        while True:
            ep = ctx.registry.find_endpoint(ctx.org_id, name)
            now = time.monotonic()
            if now >= next_state_check:
                next_state_check = now + RUN_STATE_EVERY_S
                state = run_state(run_id) or state
            status.update(phase_line(name, ep, state, now - started))
            if ep is not None and EndpointStatus(ep.status) in SETTLED:
                return Outcome(ep, state)
            if state is not None and state.is_final():
                # The run is over: what it left in the registry is the answer.
                return Outcome(ctx.registry.find_endpoint(ctx.org_id, name), state)
            time.sleep(POLL_S)


def run_state(run_id: str) -> State | None:
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectException

    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(uuid.UUID(run_id)).state
    except (httpx.HTTPError, PrefectException, RuntimeError):  # Prefect down for a moment: keep going
        return None


def phase_line(name: str, ep: Endpoint | None, state: State | None, elapsed_s: float) -> str:
    run = f"create run {state.name}" if state is not None else "create run submitted"
    if ep is None:
        return f"[yellow]pending[/] {name}  ({elapsed_s:.0f} s)  ·  {run}"
    style = STATUS_STYLE.get(ep.status, "white")
    why = f"  ·  {ep.reason_message}" if ep.reason_code and ep.reason_message else ""
    return f"[{style}]{ep.status}[/] {name}  ({elapsed_s:.0f} s)  ·  {run}{why}"


def finish(ctx: Context, name: str, outcome: Outcome) -> None:
    """Healthy: show it (exit 0). Anything else: say why, once, without a traceback (exit 1)."""
    ep, state = outcome.endpoint, outcome.state
    if ep is not None and ep.status == EndpointStatus.HEALTHY:
        show_endpoint(ctx, ep.id)
        return
    run = f"the create run ended {state.name}" if state is not None else "the create run ended"
    run_message = (state.message or "").strip().rstrip(".") if state is not None else ""
    if ep is None:
        err.print(f"[bold red]Endpoint {name} was not created:[/] {run}"
                  f"{': ' + run_message if run_message else ' without a message'}.")
        err.print("  hint: its logs are in the Prefect UI and in the control-plane worker's log "
                  "(`endpoints status` shows where).")
        raise typer.Exit(1)
    if ep.reason_code:
        err.print(f"[bold red]Endpoint {name} {ep.status}:[/] {ep.reason_code}: {ep.reason_message}")
        if ep.reason_hint:
            err.print(f"  hint: {ep.reason_hint}")
    else:
        detail = f"{run}: {run_message}" if run_message else run
        err.print(f"[bold red]Endpoint {name} is {ep.status}:[/] {detail}.")
        if not EndpointStatus(ep.status).is_terminal:
            err.print(f"  The reconcile flow finishes it; watch it with `endpoints show {name}`.")
    raise typer.Exit(1)
