"""Make a Prefect server ready: work pools, blocks and deployments.

Needs PREFECT_API_URL in the environment (the stack sets it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

from blocks.settings_blocks import CheckpointStoreConfig, EngineHost, RegistryDatabase
from deployments.pools import ALL_POOLS
from inference_endpoints.deployment_names import RETIRED
from inference_endpoints.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_DIR / "deployments" / "prefect.yaml"


def ensure_pools() -> None:
    """Create or update every pool; docker/kubernetes pools with their own base job templates."""
    process_template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client:
        for pool in ALL_POOLS:
            own_template = pool.job_template()
            template = own_template or process_template
            try:
                client.read_work_pool(pool.name)
                update = WorkPoolUpdate(concurrency_limit=pool.concurrency, description=pool.description)
                if own_template is not None:  # keep GPU pools' templates current
                    update.base_job_template = own_template
                client.update_work_pool(pool.name, update)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(
                    name=pool.name, type=pool.type, base_job_template=template,
                    concurrency_limit=pool.concurrency, description=pool.description))


def save_blocks(settings: Settings, engine_python: str) -> None:
    for block_type in (RegistryDatabase, CheckpointStoreConfig, EngineHost):
        block_type.register_type_and_schema()
    RegistryDatabase(url=settings.db_url).save("default", overwrite=True)
    CheckpointStoreConfig(root=str(settings.store_root),
                          imports_root=str(settings.imports_dir)).save("default", overwrite=True)
    EngineHost(
        engine_python=engine_python,
        backend_host=settings.backend_host,
        run_dir=str(settings.run_dir / "engines"),
        log_dir=str(settings.log_dir),
    ).save("default", overwrite=True)


def deploy(env: dict[str, str]) -> None:
    """Apply prefect.yaml, exactly as a user would from the CLI."""
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
         "--prefect-file", str(PREFECT_FILE)],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{result.stdout}\n{result.stderr}")


ZOMBIE_AUTOMATION = "inference-endpoints: crash runs that stop sending heartbeats"
HEARTBEAT_S = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY for flow runs the workers start


def ensure_zombie_automation() -> None:
    """Self-hosted Prefect has no zombie detection: a run whose host died stays Running.

    Flow runs emit a heartbeat every 30 s; a run silent for three heartbeats is marked
    Crashed, which the reconcile flow then treats like any other crash.
    """
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=ZOMBIE_AUTOMATION)  # type: ignore[unused-coroutine]
        return
    except ValueError:
        pass
    automation = Automation(
        name=ZOMBIE_AUTOMATION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            # Only serve runs live long enough to matter (and short runs that finish before
            # their first heartbeat is processed would trip it for nothing).
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": "serve-endpoint"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=HEARTBEAT_S * 3),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"No heartbeat for {HEARTBEAT_S * 3} s: the host or "
                                            "process running this flow is gone")],
    )
    automation.create()


def retire_old_deployments() -> list[str]:
    """Delete the deployments an earlier version named `default` (the ones prefect.yaml now
    names for what they run), so an upgraded server has one reconcile schedule, not two."""
    retired = []
    with get_client(sync_client=True) as client:
        for name in RETIRED:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            client.delete_deployment(deployment.id)
            retired.append(name)
    return retired


def apply_all(settings: Settings, engine_python: str, env: dict[str, str]) -> None:
    ensure_pools()
    save_blocks(settings, engine_python)
    deploy(env)
    retire_old_deployments()
    ensure_zombie_automation()
