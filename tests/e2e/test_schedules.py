"""After `endpoints up` (here: the session's stack, set up the same way) the garbage
collector and the reconcile flow are deployments with schedules, and Prefect's scheduler
has already put their runs on the calendar."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from tests.e2e.conftest import E2EStack

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("deployment", "expected"), [
    ("collect-checkpoint-garbage/default", ("cron", "*/10 * * * *")),
    ("reconcile-endpoints/default", ("interval", timedelta(seconds=30))),
])
def test_scheduled_deployments_have_runs(e2e: E2EStack, deployment: str,
                                         expected: tuple[str, object]) -> None:
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        schedules = [s.schedule for s in dep.schedules if s.active]
        assert schedules, f"{deployment} has no active schedule"
        kind, value = expected
        assert getattr(schedules[0], kind) == value
        deadline = time.monotonic() + 60
        runs = []
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
            if runs:
                break
            time.sleep(2)
    assert runs, f"no runs of {deployment} were scheduled"
    assert all(r.deployment_id == dep.id for r in runs)
