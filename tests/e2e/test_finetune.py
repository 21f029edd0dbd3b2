"""After fine-tuning: the `finetune.completed` event creates an endpoint, a replayed event
creates nothing twice, and a second job with policy `replace` moves the endpoint to the new
checkpoint while a client keeps calling its stable URL without a single error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from openai import OpenAI
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from inference_endpoints.demo import make_demo
from tests.e2e.conftest import E2EStack

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


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class ClientLoop(threading.Thread):
    """Calls the stable URL in a loop and counts every failure."""

    def __init__(self, base_url: str, key: str):
        super().__init__(daemon=True)
        self.client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
        self.stop_flag = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                out = self.client.completions.create(model="ft-chat", prompt="Hello", max_tokens=4)
                assert out.choices
                self.ok += 1
            except Exception as exc:
                self.errors.append(repr(exc))
            time.sleep(0.05)


def test_finetune_event_creates_replays_and_rolls(e2e: E2EStack, tmp_path: Path) -> None:
    e2e.ensure_worker()
    job1 = tmp_path / "job-1"
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

    job2 = make_demo(tmp_path / "job-2", steps=40, seed=1, lora_steps=1).full
    loop = ClientLoop(f"{e2e.url('ft-chat')}/v1", e2e.api_key)
    loop.start()
    time.sleep(2)
    emit("--job", "j2", "--checkpoint-path", str(job2), "--endpoint", "ft-chat", "--policy", "replace")
    wait_for(lambda: (c := e2e.registry.find_checkpoint(e2e.org_id, "ft-j2")) is not None
             and e2e.endpoint("ft-chat").checkpoint_id == c.id, 240, "traffic switched to ft-j2")
    wait_for(lambda: e2e.registry.open_lease_count(first.id) == 1, 90, "the old run's lease released")
    time.sleep(2)
    loop.stop_flag.set()
    loop.join(35)
    print(f"client loop during the replacement: {loop.ok} ok, {len(loop.errors)} errors")
    assert loop.ok > 20
    assert loop.errors == [], loop.errors[:5]
    after = e2e.endpoint("ft-chat")
    assert after.status == "healthy" and after.generation == 1
    assert after.serve_run_id != first.serve_run_id
    assert "replaced" in [ev.kind for ev in e2e.registry.activity(first.id)]
    assert e2e.stop("ft-chat", remove=True) == "removed"
