"""Registry behaviour on SQLite and PostgreSQL: keys, guarded status changes, leases."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_endpoints.adapters.runtime import model_root_resolver
from inference_endpoints.core.catalog import CATALOG
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.lifecycle import Purpose, Role
from inference_endpoints.core.status import EndpointStatus, ReasonCode
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.persistence.models import utcnow
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.operations import plan_create, register_checkpoint
from tests.archs import write_tiny_llama
from tests.lifecycle_support import put_status
from tests.sources import allow, policy_for


def _endpoint(registry: Registry, tmp_path: Path, name: str = "ep", key: str | None = None) -> str:
    org = registry.get_org_by_name("default")
    assert org is not None
    store = LocalCheckpointStore(tmp_path / "store")
    if registry.find_checkpoint(org.id, "tiny") is None:
        sources = allow(registry, policy_for(tmp_path, store.root), org.id, tmp_path / "src")
        register_checkpoint(registry, store, org.id, write_tiny_llama(tmp_path / "src" / "tiny"), "tiny",
                            sources=sources)
    plan = plan_create(registry, org.id, CreateRequest(name, "tiny", "cpu-dev", 512, "float32"),
                       model_root_resolver(tmp_path / "run"))
    return registry.record_endpoint(org.id, plan.request, plan.spec,
                                    endpoint_id=plan.endpoint_id, idempotency_key=key).id


def test_init_is_idempotent_and_loads_the_catalog(registry: Registry) -> None:
    registry.init(default_org="default")
    instances = registry.instances()
    assert set(instances) == {spec.name for spec in CATALOG}
    assert instances["h100-80gb-x2"].gpu_count == 2
    assert instances["t4-16gb"].precisions == ("auto", "float16", "float32")
    assert "cpu-dev" in instances


def test_keys_are_hashed_shown_once_and_revocable(registry: Registry) -> None:
    org, first = registry.create_org("acme")
    assert registry.org_for_key(first.secret).id == org.id  # type: ignore[union-attr]
    stored = registry.list_keys(org.id)
    assert all(first.secret not in (k.key_hash, k.prefix) for k in stored)
    assert first.secret.startswith(stored[0].prefix)
    second = registry.create_key(org.id, "ci")
    registry.revoke_key(org.id, second.key.prefix)
    assert registry.org_for_key(second.secret) is None
    assert registry.org_for_key("ie_nope_nope") is None
    with pytest.raises(RequestInvalid):
        registry.create_org("acme")


def test_status_is_derived_from_facts_and_every_change_recorded(registry: Registry, tmp_path: Path) -> None:
    ep = _endpoint(registry, tmp_path)
    row = registry.get_endpoint(ep)
    assert row is not None and row.status == "pending" and row.live_run is not None
    run = row.live_run
    registry.runs.record_submitted(run, "fr-1")
    assert registry.get_endpoint(ep).status == "deploying"  # type: ignore[union-attr]
    registry.runs.report(run, engine_started_at=utcnow(), backend_url="http://127.0.0.1:9")
    assert registry.get_endpoint(ep).status == "loading"  # type: ignore[union-attr]
    registry.runs.report(run, not_ready_message="first-token probe got HTTP 500")
    assert registry.get_endpoint(ep).status == "loading"  # type: ignore[union-attr]
    registry.runs.report(run, ready_at=utcnow())
    row = registry.get_endpoint(ep)
    assert row is not None and row.status == "healthy" and row.backend_url == "http://127.0.0.1:9"
    assert row.serve_run_id == "fr-1"
    assert registry.runs.ended(run, ReasonCode.ENGINE_EXITED, "boom")
    assert not registry.runs.ended(run, ReasonCode.RUN_ENDED, "again")  # an end is written once
    assert not registry.runs.report(run, ready_at=utcnow())  # nor facts after it
    row = registry.get_endpoint(ep)
    assert row is not None and row.status == "unhealthy" and row.reason_code == "engine_exited"
    assert row.reason_hint and row.healthy_at
    events = [(e.from_status, e.to_status) for e in registry.activity(ep) if e.kind == "status"]
    assert events == [(None, "pending"), ("pending", "deploying"), ("deploying", "loading"),
                      ("loading", "healthy"), ("healthy", "unhealthy")]


def test_stop_intent_stops_every_run_and_a_verdict_is_final(registry: Registry, tmp_path: Path) -> None:
    ep = _endpoint(registry, tmp_path)
    live = registry.get_endpoint(ep).live_run  # type: ignore[union-attr]
    assert live is not None
    assert registry.runs.give_up(ep, ReasonCode.DEPLOY_TIMEOUT, "no worker", expected_live="other") is False
    assert registry.runs.request_stop(ep)
    assert registry.runs.get(live).stop_requested_at is not None  # type: ignore[union-attr]
    assert registry.get_endpoint(ep).status == "stopping"  # type: ignore[union-attr]
    # A stopped endpoint takes no new serve runs (a late restart cannot bring it back).
    assert registry.runs.add_run(ep, Role.LIVE, Purpose.RESTART, expected_live=live) is None
    assert registry.open_lease_count(ep) == 1  # stopping: the engine may still read its checkpoint
    registry.runs.ended(live, ReasonCode.STOPPED_BY_USER, "stopped")
    row = registry.get_endpoint(ep)
    # Every run has ended, but `stopped` also means "holds nothing": still stopping.
    assert row is not None and row.status == "stopping" and "releasing" in (row.reason_message or "")
    assert registry.release_leases(ep) == 1  # the reconciler's release step
    registry.runs.settle(ep)
    row = registry.get_endpoint(ep)
    assert row is not None and row.status == "stopped" and row.reason_code == "stopped_by_user"
    assert registry.open_lease_count(ep) == 0


def test_a_restart_replaces_only_the_run_it_expected(registry: Registry, tmp_path: Path) -> None:
    ep = _endpoint(registry, tmp_path)
    live = registry.get_endpoint(ep).live_run  # type: ignore[union-attr]
    first = registry.runs.add_run(ep, Role.LIVE, Purpose.RESTART, expected_live=live)
    second = registry.runs.add_run(ep, Role.LIVE, Purpose.RESTART, expected_live=live)  # a racing pass
    assert first is not None and second is None
    assert first.generation == 1 and registry.get_endpoint(ep).live_run == first.id  # type: ignore[union-attr]
    assert [r.purpose for r in registry.runs.of(ep)] == ["start", "restart"]


def test_idempotency_key_returns_the_same_endpoint(registry: Registry, tmp_path: Path) -> None:
    a = _endpoint(registry, tmp_path, "one", key="k1")
    org = registry.get_org_by_name("default")
    assert org is not None
    again = registry.find_by_idempotency_key(org.id, "k1")
    assert again is not None and again.id == a
    assert registry.counts()["endpoints"] == 1


def test_lease_is_taken_with_the_endpoint_and_released_once(registry: Registry, tmp_path: Path) -> None:
    ep = _endpoint(registry, tmp_path)
    assert registry.open_lease_count(ep) == 1
    registry.set_lease_run(ep, "run-1")
    assert registry.release_leases(ep) == 1
    assert registry.release_leases(ep) == 0
    assert registry.open_lease_count(ep) == 0


def test_remove_requires_a_terminal_status(registry: Registry, tmp_path: Path) -> None:
    ep = _endpoint(registry, tmp_path)
    with pytest.raises(RequestInvalid):
        registry.remove_endpoint(ep)
    put_status(registry, ep, EndpointStatus.STOPPED)
    registry.remove_endpoint(ep)
    assert registry.get_endpoint(ep) is None
    _endpoint(registry, tmp_path)  # the name is free again


def test_deleted_checkpoint_cannot_be_leased(registry: Registry, tmp_path: Path) -> None:
    org = registry.get_org_by_name("default")
    assert org is not None
    store = LocalCheckpointStore(tmp_path / "store")
    sources = policy_for(tmp_path, store.root)
    drop = sources.drop_folder(org.name)  # built in the organization's drop folder
    assert drop is not None
    register_checkpoint(registry, store, org.id, write_tiny_llama(drop / "t"), "tiny", sources=sources)
    plan = plan_create(registry, org.id, CreateRequest("ep", "tiny", "cpu-dev", 512, "float32"),
                       model_root_resolver(tmp_path / "run"))
    row = registry.find_checkpoint(org.id, "tiny")
    assert row is not None
    with registry.session() as s:  # deleted between validation and recording
        fresh = s.get(type(row), row.id)
        fresh.status = "deleted"
        s.add(fresh)
    before = registry.counts()
    with pytest.raises(RequestInvalid) as exc:
        registry.record_endpoint(org.id, plan.request, plan.spec, endpoint_id=plan.endpoint_id,
                                 idempotency_key=None)
    assert exc.value.codes == ["checkpoint_deleted"]
    assert registry.counts() == before


def test_migrations_match_the_models(registry: Registry) -> None:
    """Alembic's head schema is exactly what the SQLModel tables declare."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from inference_endpoints.persistence.db import get_engine

    with get_engine(registry.url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []


def test_a_ready_candidate_is_promoted_and_the_old_run_drained(registry: Registry, tmp_path: Path) -> None:
    ep = _endpoint(registry, tmp_path)
    live = registry.get_endpoint(ep).live_run  # type: ignore[union-attr]
    assert live is not None
    registry.runs.record_submitted(live, "fr-live")
    registry.runs.report(live, engine_started_at=utcnow(), backend_url="http://127.0.0.1:1", ready_at=utcnow())
    cand = registry.runs.add_run(ep, Role.CANDIDATE, Purpose.REPLACE, expected_live=live,
                                 config_json='{"new": true}')
    assert cand is not None and cand.generation == 1
    assert registry.runs.add_run(ep, Role.CANDIDATE, Purpose.REPLACE, expected_live=live) is None  # one at a time
    assert not registry.runs.promote(ep, cand.id)  # not ready yet
    registry.runs.record_submitted(cand.id, "fr-cand")
    registry.runs.report(cand.id, engine_started_at=utcnow(), backend_url="http://127.0.0.1:2")
    row = registry.get_endpoint(ep)
    assert row is not None and row.status == "healthy" and row.backend_url == "http://127.0.0.1:1"
    registry.runs.report(cand.id, ready_at=utcnow())
    assert registry.runs.promote(ep, cand.id)
    row = registry.get_endpoint(ep)
    assert row is not None and row.live_run == cand.id and row.candidate_run is None
    assert row.status == "healthy" and row.backend_url == "http://127.0.0.1:2"
    assert row.serve_run_id == "fr-cand" and row.serving_config_json == '{"new": true}'
    old = registry.runs.get(live)
    assert old is not None and old.stop_requested_at is not None and old.ended_at is None
    assert "replaced" in [e.kind for e in registry.activity(ep)]
