"""reconcile-endpoints: the scheduled pass of the one reconciler over every endpoint.

Every 30 s (deployments/prefect.yaml). Facts in (registry, Prefect run states in one
batch, backend probes in parallel), one pure decision per endpoint (`core.reconcile`),
each step applied as a guarded update (`services.reconciler`). The create and stop
flows and a serve run whose engine died call the same code for their own endpoint;
this pass finishes whatever they could not (a create whose CLI or flow died, a
replacement whose flow died, a serve run whose worker died). Also here: a local
stack's dead worker is restarted, and idle endpoints get a stop intent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import Field

from inference_endpoints.core.reconcile import RestartPolicy
from inference_endpoints.core.status import EndpointStatus, ReasonCode
from inference_endpoints.persistence.models import Endpoint, utcnow
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.reconciler import Settings
from tasks.context import load_context
from tasks.orchestration import reconcile_now
from tasks.runs import crash_stuck_pending


def recover_local_workers() -> list[str]:
    """On a local stack, a worker that died is started again (its pid is in the stack file)."""
    from inference_endpoints.adapters.processes import alive
    from inference_endpoints.localstack.stack import LocalStack
    from inference_endpoints.settings import Settings as StackSettings

    stack = LocalStack(StackSettings())
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
    from inference_endpoints.adapters.gateway.stats import fetch_traffic
    from inference_endpoints.core.cost import idle_stop_due
    from inference_endpoints.settings import Settings as StackSettings

    watched = [ep for ep in endpoints if ep.idle_stop_minutes and ep.status == EndpointStatus.HEALTHY]
    if not watched:
        return []
    traffic = fetch_traffic(StackSettings())
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
        registry.runs.request_stop(ep.id, ReasonCode.IDLE_TIMEOUT, message)
        rows.append({"endpoint": ep.name, "decision": "idle_stop", "why": message, "done": "stop requested"})
    return rows


def _aware(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@flow(name="reconcile-endpoints")
def reconcile_endpoints(
    max_restarts: int = Field(default=3, description="Restarts allowed within the window"),
    window_minutes: int = Field(default=10, description="Restart window in minutes"),
    backoff_seconds: int = Field(default=5, description="First restart delay; doubles each time"),
) -> list[dict[str, str]]:
    """Compare what should run with what does, and act on the difference."""
    logger = get_run_logger()
    registry = load_context().registry
    rows: list[dict[str, str]] = []
    for message in recover_local_workers():
        logger.warning(message)
        rows.append({"endpoint": "*", "decision": "worker_restarted", "why": message, "done": "restarted"})
    for name in crash_stuck_pending():
        logger.warning("control-plane run %s never started; marked crashed", name)
        rows.append({"endpoint": "*", "decision": "crash_stuck_run", "why": f"{name} stuck Pending",
                     "done": "crashed (its concurrency slot released)"})
    rows += stop_idle(registry, registry.active_endpoints())
    policy = RestartPolicy(max_restarts, timedelta(minutes=window_minutes),
                           timedelta(seconds=backoff_seconds))
    rows += [r.as_dict() for r in reconcile_now(registry, None, Settings(policy=policy), log=logger.info)]
    if rows:
        create_table_artifact(key="reconcile-last", table=rows, description="Last reconcile decisions")
    return rows
