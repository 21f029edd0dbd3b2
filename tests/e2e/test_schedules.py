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
    ("collect-checkpoint-garbage/reclaim-bytes", ("cron", "*/10 * * * *")),
    ("reconcile-endpoints/self-healing", ("interval", timedelta(seconds=30))),
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


def test_deployments_are_named_for_what_they_run_and_old_names_are_retired(e2e: E2EStack) -> None:
    """prefect.yaml and the product agree on every name; a `default` left by an earlier version
    (here: made the way `prefect deploy` made it) is deleted by `endpoints up`'s apply step."""
    import yaml

    from deployments.apply import PREFECT_FILE, retire_old_deployments
    from inference_endpoints import deployment_names

    declared = yaml.safe_load(PREFECT_FILE.read_text())["deployments"]
    names = {d["name"] for d in declared}
    assert "default" not in names
    with get_client(sync_client=True) as client:
        for full in deployment_names.ALL:
            client.read_deployment_by_name(full)  # raises ObjectNotFound if missing
        live = client.read_deployment_by_name(deployment_names.RECONCILE)
        old_id = client.create_deployment(flow_id=live.flow_id, name="default",
                                          entrypoint=live.entrypoint, work_pool_name="control-plane")
        assert client.read_deployment_by_name("reconcile-endpoints/default").id == old_id
    assert retire_old_deployments() == ["reconcile-endpoints/default"]
    with get_client(sync_client=True) as client:
        from prefect.exceptions import ObjectNotFound

        with pytest.raises(ObjectNotFound):
            client.read_deployment_by_name("reconcile-endpoints/default")
        client.read_deployment_by_name(deployment_names.RECONCILE)  # the new one stays
    assert retire_old_deployments() == []  # nothing left to retire
