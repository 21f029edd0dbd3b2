"""After fine-tuning: the `finetune.completed` event creates an endpoint, a replayed event
creates nothing twice, and a second job with policy `replace` moves the endpoint to the new
checkpoint while a client keeps calling its stable URL without a single error. Then two
replacements that do not finish (their flow killed; their endpoint stopped) leave nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.deployments import run_deployment

from inference_endpoints.adapters.processes import alive
from inference_endpoints.localstack.demo import make_demo
from tests.e2e.conftest import E2EStack
from tests.e2e.engine_tools import engine_leaders, flow_run_process, wait_for
from tests.e2e.traffic import ClientLoop

pytestmark = pytest.mark.e2e


def emit(*args: str) -> None:
    cli = Path(sys.executable).with_name("endpoints")
    result = subprocess.run([str(cli), "emit-finetune-completed", *args], capture_output=True,
                            text=True, check=False, env=dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr


def finetune_runs() -> list[str]:
    """State types of the on-finetune-completed runs so far."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["on-finetune-completed"])))
    return [r.state.type.value for r in runs if r.state is not None]


def test_finetune_event_creates_replays_and_rolls(e2e: E2EStack, tmp_path: Path) -> None:
    e2e.ensure_worker()
    # Fine-tuning jobs write into the organization's drop folder: an import root.
    drop = e2e.drop_folder() / tmp_path.name
    job1 = drop / "job-1"
    shutil.copytree(e2e.demo.full, job1)
    emit("--job", "j1", "--checkpoint-path", str(job1), "--endpoint", "ft-chat", "--policy", "create")
    wait_for(lambda: (ep := e2e.registry.find_endpoint(e2e.org_id, "ft-chat")) is not None
             and ep.status == "healthy", 240, "ft-chat healthy after the event")
    first = e2e.endpoint("ft-chat")
    ckpt1 = e2e.registry.find_checkpoint(e2e.org_id, "ft-j1")
    assert ckpt1 is not None and first.checkpoint_id == ckpt1.id

    emit("--job", "j1", "--checkpoint-path", str(job1), "--endpoint", "ft-chat", "--policy", "create")
    wait_for(lambda: len(finetune_runs()) >= 2 and all(
        s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for s in finetune_runs()),
        120, "the replayed event's run to finish")
    assert [e.name for e in e2e.registry.list_endpoints(e2e.org_id)].count("ft-chat") == 1
    names = [c.name for c in e2e.registry.list_checkpoints(e2e.org_id, include_deleted=True)]
    assert names.count("ft-j1") == 1

    job2 = make_demo(drop / "job-2", steps=40, seed=1, lora_steps=1).full
    # A steady client (2.5 req/s): at 20 req/s the old engine starves the candidate's load on 2 cores.
    with ClientLoop(e2e.url("ft-chat"), e2e.api_key, "ft-chat", e2e.registry, first.id) as loop:
        time.sleep(2)
        emit("--job", "j2", "--checkpoint-path", str(job2), "--endpoint", "ft-chat", "--policy", "replace")
        wait_for(lambda: (c := e2e.registry.find_checkpoint(e2e.org_id, "ft-j2")) is not None
                 and e2e.endpoint("ft-chat").checkpoint_id == c.id, 480, "traffic switched to ft-j2")
        wait_for(lambda: e2e.registry.open_lease_count(first.id) == 1, 90, "the old run's lease released")
        time.sleep(2)
    failures = loop.failures()
    print(f"client loop during the replacement: {loop.count()} calls, {len(failures)} failed")
    assert loop.count() > 10
    assert failures == [], failures[:5]
    after = e2e.endpoint("ft-chat")
    assert after.status == "healthy" and after.generation == 1
    assert after.serve_run_id != first.serve_run_id
    assert "replaced" in [ev.kind for ev in e2e.registry.activity(first.id)]

    interrupted_replacements_leave_nothing(e2e, "ft-chat")
    assert e2e.stop("ft-chat", remove=True) == "removed"


RECONCILE_INTERVAL_S = 30


def _start_replacement(e2e: E2EStack, name: str, job: str) -> str:
    run = run_deployment("on-finetune-completed/on-finetune-event", timeout=0, as_subflow=False, parameters={
        "job_id": f"finetune.job.{job}", "checkpoint_path": str(e2e.demo.full), "org": e2e.org_name,
        "checkpoint_name": f"{name}-{job}", "policy": "replace", "endpoint": name})
    return str(run.id)  # type: ignore[union-attr]


def _candidate_started(e2e: E2EStack, endpoint_id: str) -> bool:
    ep = e2e.registry.get_endpoint(endpoint_id)
    run = e2e.registry.runs.get(ep.candidate_run) if ep and ep.candidate_run else None
    return run is not None and run.engine_started_at is not None


def interrupted_replacements_leave_nothing(e2e: E2EStack, name: str) -> None:
    """A replacement whose flow is SIGKILLed while its candidate loads, then one whose endpoint
    is stopped mid-way: no candidate engine is left, every lease is released, and the stable
    URL answers every request while the old run serves. Nothing here calls the reconciler."""
    ep = e2e.endpoint(name)
    assert ep.status == "healthy", ep.reason_message
    old_leader = engine_leaders(ep.id)
    assert len(old_leader) == 1
    leases_before = e2e.registry.open_lease_count(ep.id)

    # 1. The flow that asked for the replacement is SIGKILLed while the candidate loads.
    with ClientLoop(e2e.url(name), e2e.api_key, name, e2e.registry, ep.id) as loop:
        flow_run = _start_replacement(e2e, name, "kill")
        wait_for(lambda: _candidate_started(e2e, ep.id), 240, "the candidate's engine to start")
        candidate = e2e.endpoint(name).candidate_run
        proc = flow_run_process(flow_run)
        assert proc is not None, "the on-finetune-completed run's process was not found"
        proc.send_signal(signal.SIGKILL)
        # The scheduled reconcile sees the flow crashed and drops its candidate.
        wait_for(lambda: e2e.registry.runs.get(candidate).ended_at is not None,  # type: ignore[union-attr]
              3 * RECONCILE_INTERVAL_S + 60, "the orphaned candidate to be stopped")
        wait_for(lambda: engine_leaders(ep.id) == old_leader, 60, "the candidate's engine to be gone")
    assert loop.failures() == [], loop.failures()[:5]
    assert loop.count() > 20
    current = e2e.endpoint(name)
    assert current.status == "healthy" and current.candidate_run is None
    assert current.checkpoint_id == ep.checkpoint_id  # still serving the original checkpoint
    wait_for(lambda: e2e.registry.open_lease_count(ep.id) == leases_before, 60, "the candidate's leases")

    # 2. The endpoint is stopped while a second replacement loads.
    with ClientLoop(e2e.url(name), e2e.api_key, name, e2e.registry, ep.id) as loop:
        flow_run = _start_replacement(e2e, name, "stop")
        wait_for(lambda: _candidate_started(e2e, ep.id), 240, "the second candidate's engine to start")
        stop_at = time.monotonic()
        assert e2e.stop(name) == "stopped"
    assert loop.failures(until=stop_at) == [], loop.failures(until=stop_at)[:5]
    assert engine_leaders(ep.id) == []
    assert not any(alive(pid) for pid in old_leader)
    assert e2e.registry.open_lease_count(ep.id) == 0
    assert all(r.ended_at is not None for r in e2e.registry.runs.of(ep.id))

