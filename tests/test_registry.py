"""Registry behaviour on SQLite and PostgreSQL: keys, guarded status changes, leases."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_endpoints.catalog import CATALOG
from inference_endpoints.errors import RequestInvalid
from inference_endpoints.operations import plan_create, register_checkpoint
from inference_endpoints.registry import Registry
from inference_endpoints.runtime import model_root_resolver
from inference_endpoints.status import EndpointStatus, ReasonCode
from inference_endpoints.store import LocalCheckpointStore
from inference_endpoints.validation import CreateRequest
from tests.archs import write_tiny_llama


def _endpoint(registry: Registry, tmp_path: Path, name: str = "ep", key: str | None = None) -> str:
    org = registry.get_org_by_name("default")
    assert org is not None
    store = LocalCheckpointStore(tmp_path / "store")
    if registry.find_checkpoint(org.id, "tiny") is None:
        register_checkpoint(registry, store, org.id, write_tiny_llama(tmp_path / "tiny"), "tiny")
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


def test_transitions_are_guarded_and_recorded(registry: Registry, tmp_path: Path) -> None:
    ep = _endpoint(registry, tmp_path)
    assert registry.transition(ep, EndpointStatus.DEPLOYING)
    assert not registry.transition(ep, EndpointStatus.STOPPED)  # deploying -> stopped: not allowed
    assert registry.transition(ep, EndpointStatus.LOADING)
    assert registry.transition(ep, EndpointStatus.HEALTHY)
    assert registry.transition(ep, EndpointStatus.FAILED, reason=ReasonCode.ENGINE_EXITED,
                               message="boom")
    assert not registry.transition(ep, EndpointStatus.HEALTHY)  # failed is terminal
    row = registry.get_endpoint(ep)
    assert row is not None and row.status == "failed" and row.reason_code == "engine_exited"
    assert row.reason_hint and row.healthy_at and row.ended_at
    events = [(e.from_status, e.to_status) for e in registry.activity(ep)]
    assert events == [(None, "pending"), ("pending", "deploying"), ("deploying", "loading"),
                      ("loading", "healthy"), ("healthy", "failed")]


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
    registry.transition(ep, EndpointStatus.STOPPING)
    registry.transition(ep, EndpointStatus.STOPPED)
    registry.remove_endpoint(ep)
    assert registry.get_endpoint(ep) is None
    _endpoint(registry, tmp_path)  # the name is free again


def test_deleted_checkpoint_cannot_be_leased(registry: Registry, tmp_path: Path) -> None:
    org = registry.get_org_by_name("default")
    assert org is not None
    store = LocalCheckpointStore(tmp_path / "store")
    register_checkpoint(registry, store, org.id, write_tiny_llama(tmp_path / "t"), "tiny")
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

    from inference_endpoints.db import get_engine

    with get_engine(registry.url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
