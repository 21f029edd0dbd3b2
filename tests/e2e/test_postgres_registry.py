"""The production registry, PostgreSQL, end to end: create → delete the checkpoint record →
the collector keeps its bytes and the endpoint keeps answering → stop → the collector
reclaims them, once. (On SQLite the console's browser test walks the same path.)

The session's stack keeps running; for this test its `registry-database/default` block
points at a scratch PostgreSQL database (127.0.0.1:5432), so every flow — in this process
and on the workers — reads and writes PostgreSQL. The block is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI
from pydantic import SecretStr

from blocks.settings_blocks import RegistryDatabase
from flows.collect_garbage import collect_checkpoint_garbage
from flows.create_endpoint import create_endpoint
from flows.stop_endpoint import stop_endpoint
from inference_endpoints.adapters.runtime import model_root_resolver
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.persistence.checkpoint_lifecycle import delete_checkpoint, list_with_holders
from inference_endpoints.persistence.db import scratch_postgres
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.operations import plan_create, register_checkpoint
from tests.e2e.conftest import E2EStack

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_registry(e2e: E2EStack) -> Iterator[Registry]:
    with scratch_postgres(ADMIN_URL, prefix="ie_e2e") as url:
        registry = Registry(url)
        registry.init(default_org=e2e.org_name)
        previous = RegistryDatabase.load("default")
        RegistryDatabase(url=SecretStr(url)).save("default", overwrite=True)
        try:
            yield registry
        finally:
            previous.save("default", overwrite=True)  # type: ignore[attr-defined]


def test_postgres_registry_keeps_bytes_while_served_and_reclaims_after_stop(
        e2e: E2EStack, pg_registry: Registry) -> None:
    assert pg_registry.url.startswith("postgresql")
    org = pg_registry.get_org_by_name(e2e.org_name)
    assert org is not None
    ckpt = register_checkpoint(pg_registry, e2e.store, org.id, e2e.demo.full, "pg-demo", sources=e2e.sources)
    stored = e2e.store.path_of(ckpt.location)
    endpoint_id = create_endpoint(name="pg-demo", checkpoint="pg-demo", instance="cpu-dev",
                                  max_context=1024, precision="float32", org=e2e.org_name)  # type: ignore[arg-type]
    ep = pg_registry.get_endpoint(endpoint_id)
    assert ep is not None and ep.status == "healthy", ep
    assert e2e.registry.find_endpoint(e2e.org_id, "pg-demo") is None  # nothing went to SQLite
    runs = pg_registry.runs.of(endpoint_id)
    assert len(runs) == 1 and runs[0].ready_at is not None  # the serve run reported to PostgreSQL

    assert ep.backend_url and ep.backend_api_key
    engine = OpenAI(base_url=f"{ep.backend_url}/v1", api_key=ep.backend_api_key, max_retries=0)

    def complete() -> str:
        return engine.completions.create(model="pg-demo", prompt="The endpoint", max_tokens=8).choices[0].text

    assert complete()
    answer = delete_checkpoint(pg_registry, org.id, ckpt.id)
    assert answer.newly_deleted and answer.held
    assert [h.endpoint_name for h in answer.holders] == ["pg-demo"]
    assert "pg-demo" not in {c.name for c in pg_registry.list_checkpoints(org.id)}
    listed = {row.id: [h.endpoint_name for h in holders] for row, holders in
              list_with_holders(pg_registry, org.id, include_deleted=True)}
    assert listed[ckpt.id] == ["pg-demo"]
    with pytest.raises(RequestInvalid) as refused:  # new endpoints are refused at once
        plan_create(pg_registry, org.id, CreateRequest("pg-demo-2", "pg-demo", "cpu-dev", 1024, "float32"),
                    model_root_resolver(e2e.settings.run_dir / "engines"))
    assert refused.value.codes == ["checkpoint_deleted"]
    held = collect_checkpoint_garbage(dry_run=False)
    assert held["prefect_error"] is None
    row = next(r for r in held["rows"] if r["id"] == ckpt.id)
    assert row["result"] == "held" and "pg-demo" in row["detail"], row
    still = pg_registry.find_checkpoint(org.id, ckpt.id)
    assert stored.is_dir() and still is not None and still.status == "deleted"
    assert complete(), "the endpoint stopped answering after its checkpoint record was deleted"

    assert stop_endpoint(endpoint="pg-demo", org=e2e.org_name) == "stopped"
    assert pg_registry.open_lease_count(endpoint_id) == 0
    done = collect_checkpoint_garbage(dry_run=False)
    final = pg_registry.find_checkpoint(org.id, ckpt.id)
    assert final is not None and final.status == "reclaimed" and final.reclaimed_at, final
    assert not stored.exists()
    row = next((r for r in done["rows"] if r["id"] == ckpt.id), None)
    # The */10 schedule may have got there first (then this run has no row, or a skip).
    if row is not None and row["result"] == "reclaimed":
        assert int(row["bytes freed"]) == ckpt.size_bytes, row
    again = collect_checkpoint_garbage(dry_run=False)
    assert all(r["id"] != ckpt.id for r in again["rows"])  # reclaimed once, never again
