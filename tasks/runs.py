"""Thin, retryable steps that talk to the Prefect API about serve runs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling

SERVE_FLOW = "serve-endpoint"
FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


@task(retries=3, retry_delay_seconds=1)
def submit_serve_run(endpoint_id: str, org: str, name: str, work_pool: str,
                     generation: int = 0, purpose: str = "serve",
                     job_variables: dict[str, Any] | None = None) -> str:
    """Schedule a long-running serve run on the instance's work pool.

    Idempotent per endpoint, generation and purpose (a restart or a replacement is a
    new generation). `as_subflow=False`: the endpoint outlives the run that launched it.
    `job_variables` are the run's own (Kubernetes pools: GPUs, engine, mounts).
    """
    run = run_deployment(
        f"{SERVE_FLOW}/{work_pool}",
        parameters={"endpoint_id": endpoint_id, "generation": generation},
        timeout=0,
        as_subflow=False,
        idempotency_key=f"{purpose}-{endpoint_id}-g{generation}",
        flow_run_name=f"serve/{org}/{name}" + (f"/g{generation}" if generation else ""),
        tags=["inference-endpoint", f"org:{org}", f"endpoint:{name}"],
        job_variables=job_variables,
    )
    return str(run.id)  # type: ignore[union-attr]


def read_run(run_id: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def run_state(run_id: str) -> StateType | None:
    state = read_run(run_id).state
    return state.type if state is not None else None


def is_final(state: StateType | None) -> bool:
    return state in FINAL


@task(retries=3, retry_delay_seconds=1)
def cancel_run(run_id: str, message: str) -> None:
    """Ask the run to stop, as `prefect flow-run cancel` does; no-op once it has ended.

    A run no worker has picked up yet has no process to stop, so it is cancelled outright.
    """
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
        state = run.state.type if run.state is not None else None
        if state in FINAL or state == StateType.CANCELLING:
            return
        if state in (StateType.SCHEDULED, None):
            client.set_flow_run_state(UUID(run_id), Cancelled(message=message), force=True)
        else:
            client.set_flow_run_state(UUID(run_id), Cancelling(message=message), force=True)
