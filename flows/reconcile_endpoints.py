"""reconcile-endpoints: keep every endpoint what its status says it is, and heal what broke.

Runs on a short schedule. Loads facts (statuses, Prefect run states, backend
liveness, restart history), lets the pure planner decide, then applies each decision
as a guarded registry update plus an activity event. If Prefect cannot be read,
nothing is decided: restarting on a guess could start a second engine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from pydantic import Field

from inference_endpoints.checkpoint_lifecycle import transfer_leases
from inference_endpoints.health import answers
from inference_endpoints.models import Endpoint, utcnow
from inference_endpoints.reconcile import Action, Decision, EndpointFacts, RestartPolicy, decide
from inference_endpoints.registry import Registry
from inference_endpoints.status import EndpointStatus, ReasonCode
from tasks.context import load_context
from tasks.engines import stop_orphans
from tasks.kubernetes import prepare_serve_job
from tasks.runs import cancel_run, submit_serve_run
from tasks.teardown import end_serve_run


def read_run_states(run_ids: list[str]) -> dict[str, str]:
    """State type name per run id, in one API call."""
    if not run_ids:
        return {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(r) for r in run_ids])),
            limit=len(run_ids))
    return {str(run.id): run.state.type.value for run in runs if run.state is not None}


def gather_facts(
    registry: Registry, endpoints: list[Endpoint], states: dict[str, str]
) -> list[EndpointFacts]:
    return [
        EndpointFacts(
            endpoint_id=ep.id,
            name=ep.name,
            status=EndpointStatus(ep.status),
            serve_run_id=ep.serve_run_id,
            run_state=states.get(ep.serve_run_id) if ep.serve_run_id else None,
            backend_answers=answers(ep.backend_url),
            was_healthy=ep.healthy_at is not None,
            restarts=tuple(registry.restart_times(ep.id)),
        )
        for ep in endpoints
    ]


def restart(registry: Registry, endpoint: Endpoint, message: str) -> str | None:
    """Bring up a new generation of the serve run; returns its run id.

    The new run takes over the leases first, under the same row lock the collector uses:
    once a deleted checkpoint is being reclaimed, nothing may start reading it again.
    """
    org = registry.get_org(endpoint.org_id)
    org_name = org.name if org else endpoint.org_id
    pool = registry.instances()[endpoint.instance].work_pool
    generation = endpoint.generation + 1
    assert endpoint.serving_config_json is not None
    try:
        job = prepare_serve_job(registry, endpoint, endpoint.serving_config_json, generation)
    except Exception as exc:  # e.g. its cluster is unreachable: the next pass tries again
        registry.record_activity(endpoint.id, "restart", f"restart not submitted yet: {exc}")
        return None
    new_run = submit_serve_run(endpoint.id, org_name, endpoint.name, pool, generation, "restart", job)
    if not transfer_leases(registry, endpoint.id, new_run):
        cancel_run(new_run, "checkpoint is being reclaimed")
        registry.transition(endpoint.id, EndpointStatus.FAILED, reason=ReasonCode.CHECKPOINT_UNAVAILABLE,
                            message="cannot restart: its checkpoint was deleted and is being reclaimed",
                            expected_run=endpoint.serve_run_id)
        return None
    moved = registry.transition(
        endpoint.id, EndpointStatus.DEPLOYING, expected_run=endpoint.serve_run_id,
        fields={"serve_run_id": new_run, "generation": generation, "backend_url": None},
        message=f"restarting as generation {generation} (serve run {new_run})",
    )
    if not moved:
        # Another reconcile got there first (same generation, same run: keep it), or the
        # endpoint was stopped or changed meanwhile (cancel what we submitted).
        current = registry.get_endpoint(endpoint.id)
        if current is None or current.serve_run_id != new_run:
            cancel_run(new_run, "restart superseded")
        return None
    registry.record_activity(endpoint.id, "restart", message)
    return new_run


def apply(registry: Registry, endpoint: Endpoint, decision: Decision) -> list[str]:
    done: list[str] = []
    old_run = endpoint.serve_run_id
    for action in decision.actions:
        if action == Action.STOP_ORPHAN:
            stopped = stop_orphans(registry, endpoint)
            registry.record_activity(endpoint.id, "orphan_stopped",
                                     f"stopped {stopped} engine(s) still answering for ended run {old_run}")
            done.append(f"stopped {stopped} orphan engine(s)")
        elif action == Action.MARK_UNHEALTHY:
            reason = decision.reason or ReasonCode.RUN_ENDED
            if registry.transition(endpoint.id, EndpointStatus.UNHEALTHY, reason=reason,
                                   message=decision.message, expected_run=old_run):
                done.append("marked unhealthy")
        elif action == Action.RESTART:
            new_run = restart(registry, endpoint, decision.message)
            done.append(f"restarted as {new_run}" if new_run else "restart superseded or deferred")
        elif action == Action.FAIL and registry.transition(
            endpoint.id, EndpointStatus.FAILED, reason=ReasonCode.RESTART_LIMIT,
            message=decision.message, expected_run=old_run,
        ):
            if old_run and not answers(endpoint.backend_url):
                registry.release_run_leases(old_run)
            done.append("failed: restart limit")
    return done


def recover_local_workers() -> list[str]:
    """On a local stack, a worker that died is started again (its pid is in the stack file)."""
    from inference_endpoints.processes import alive
    from inference_endpoints.settings import Settings
    from inference_endpoints.stack import LocalStack

    stack = LocalStack(Settings())
    state = stack.read_state()
    if state is None or not stack.prefect_healthy():
        return []
    restarted = []
    for pool, pid in list(state.workers.items()):
        if not alive(pid):
            new_pid = stack.start_worker(pool)
            restarted.append(f"worker for pool {pool} was gone (pid {pid}); restarted as pid {new_pid}")
    return restarted


def stop_idle(registry: Registry, endpoints: list[Endpoint]) -> list[dict[str, str]]:
    """Per-endpoint idle auto-stop: no requests through the gateway for `idle_stop_minutes`."""
    from inference_endpoints.cost import idle_stop_due
    from inference_endpoints.gateway.stats import fetch_traffic
    from inference_endpoints.settings import Settings

    watched = [ep for ep in endpoints if ep.idle_stop_minutes and ep.status == EndpointStatus.HEALTHY]
    if not watched:
        return []
    traffic = fetch_traffic(Settings())
    if traffic is None:  # without the gateway's counters, idleness is unknown: stop nothing
        return []
    rows = []
    now = utcnow()
    for ep in watched:
        org = registry.get_org(ep.org_id)
        seen = traffic.get((org.name if org else "", ep.name))
        last = (datetime.fromtimestamp(seen.last_request_at, UTC)
                if seen is not None and seen.last_request_at else None)
        verdict = idle_stop_due(idle_stop_minutes=ep.idle_stop_minutes, status=ep.status,
                                healthy_at=_aware(ep.healthy_at), last_request_at=last,
                                in_flight=seen.in_flight if seen else 0, now=now)
        if verdict is None:
            continue
        message = f"idle auto-stop: {verdict.reason}"
        registry.transition(ep.id, EndpointStatus.STOPPING, reason=ReasonCode.IDLE_TIMEOUT,
                            message=message, expected_run=ep.serve_run_id)
        end_serve_run(registry, ep.id, final=EndpointStatus.STOPPED, reason=ReasonCode.IDLE_TIMEOUT,
                      message=message)
        rows.append({"endpoint": ep.name, "decision": "idle_stop", "why": message, "done": "stopped"})
    return rows


def _aware(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@flow(name="reconcile-endpoints")
def reconcile_endpoints(
    max_restarts: int = Field(default=3, description="Restarts allowed within the window"),
    window_minutes: int = Field(default=10, description="Restart window in minutes"),
    backoff_seconds: int = Field(default=5, description="First restart delay; doubles each time"),
) -> list[dict[str, str]]:
    """Compare what should run with what does; restart crashed endpoints under the policy."""
    logger = get_run_logger()
    registry = load_context().registry
    rows: list[dict[str, str]] = []
    for message in recover_local_workers():
        logger.warning(message)
        rows.append({"endpoint": "*", "decision": "worker_restarted", "why": message, "done": "restarted"})
    policy = RestartPolicy(max_restarts, timedelta(minutes=window_minutes),
                           timedelta(seconds=backoff_seconds))
    endpoints = registry.active_endpoints()
    run_ids = [ep.serve_run_id for ep in endpoints if ep.serve_run_id]
    try:
        states = read_run_states(run_ids)
    except Exception as exc:  # Prefect unreachable: decide nothing rather than guess
        logger.warning("cannot read serve run states (%s); no decisions this time", exc)
        return [*rows, {"endpoint": "*", "decision": "skipped", "why": f"Prefect unreachable: {exc}"}]
    now = utcnow()
    by_id = {ep.id: ep for ep in endpoints}
    for facts in gather_facts(registry, endpoints, states):
        decision = decide(facts, now, policy)
        if decision.actions == (Action.NOTHING,):
            continue
        done = apply(registry, by_id[facts.endpoint_id], decision)
        logger.info("%s: %s → %s", facts.name, decision.message, ", ".join(done) or "waiting")
        rows.append({"endpoint": facts.name, "decision": ", ".join(a.value for a in decision.actions),
                     "why": decision.message, "done": "; ".join(done)})
    rows += stop_idle(registry, registry.active_endpoints())
    if rows:
        create_table_artifact(key="reconcile-last", table=rows, description="Last reconcile decisions")
    return rows
