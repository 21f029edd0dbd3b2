"""Thin, retryable steps that talk to the Prefect API about serve runs."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling, Crashed

SERVE_FLOW = "serve-endpoint"
FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


@task(retries=3, retry_delay_seconds=1)
def submit_serve_run(endpoint_id: str, org: str, name: str, work_pool: str, serve_run: str,
                     generation: int = 0, job_variables: dict[str, Any] | None = None) -> str:
    """Schedule a long-running serve run on the instance's work pool.

    Idempotent per serve run record (`serve_run`): a resubmission after a crash between
    submitting and recording returns the same flow run. `as_subflow=False`: the endpoint
    outlives the run that launched it. `job_variables` are the run's own (Kubernetes
    pools: GPUs, engine, mounts).
    """
    run = run_deployment(
        f"{SERVE_FLOW}/{work_pool}",
        parameters={"endpoint_id": endpoint_id, "generation": generation, "serve_run": serve_run},
        timeout=0,
        as_subflow=False,
        idempotency_key=f"serve-{serve_run}",
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
def cancel_run(run_id: str, message: str) -> bool:
    """Ask the run to stop, as `prefect flow-run cancel` does; no-op once it has ended.

    A run no worker has picked up yet has no process to stop, so it is cancelled outright
    (returns True: nothing will ever report its end).
    """
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
        state = run.state.type if run.state is not None else None
        if state in FINAL or state == StateType.CANCELLING:
            return False
        if state in (StateType.SCHEDULED, None):
            client.set_flow_run_state(UUID(run_id), Cancelled(message=message), force=True)
            return True
        client.set_flow_run_state(UUID(run_id), Cancelling(message=message), force=True)
        return False


def read_run_states(run_ids: Sequence[str]) -> dict[str, str]:
    """State type name per run id, in one API call."""
    if not run_ids:
        return {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(r) for r in run_ids])),
            limit=len(run_ids))
    return {str(run.id): run.state.type.value for run in runs if run.state is not None}


def read_pool_slots(pool: str) -> tuple[int | None, list[str]]:
    """A work pool's concurrency limit and the names of the runs holding its slots.

    Prefect's pool scheduler counts runs `Pending` or `Running` against the limit
    (`prefect.server.models.workers.WORK_POOL_SLOT_OCCUPYING_STATES`).
    """
    with get_client(sync_client=True) as client:
        limit = client.read_work_pool(pool).concurrency_limit
        if limit is None:
            return None, []
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])), limit=200)
    return limit, sorted(run.name for run in runs)


CONTROL_PLANE_POOL = "control-plane"
STUCK_PENDING = timedelta(minutes=5)


def crash_stuck_pending(older_than: timedelta = STUCK_PENDING, pool: str = CONTROL_PLANE_POOL,
                        only: Collection[str] | None = None) -> list[str]:
    """Crash control-plane runs left `Pending` long after their worker submitted them.

    A worker that submits a run while Prefect goes down leaves it `Pending` for good: its
    process exits before it could report, and it never sent a heartbeat, so the zombie
    automation never fires. Such a run holds its deployment's concurrency slot, and with
    `CANCEL_NEW` every later run of that deployment (the garbage collector's) is cancelled.
    Control-plane flows start in seconds; engines' pools are left alone (a Kubernetes pod
    pulling an image is legitimately `Pending` for minutes). A forced Crashed releases the slot.
    """
    now = datetime.now(UTC)
    crashed = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])), limit=100)
        for run in runs:
            if only is not None and str(run.id) not in only:
                continue
            if run.state is None or now - run.state.timestamp < older_than:
                continue
            client.set_flow_run_state(run.id, Crashed(
                message=f"Pending for over {older_than.total_seconds():.0f} s after its worker "
                        "submitted it: its process never started (was Prefect unreachable?)"),
                force=True)
            crashed.append(run.name)
    return crashed
