"""Checkpoint-lifecycle guards that a mutation run (`make mutate`) found untested, on SQLite and PostgreSQL.

Each test pins one thing a one-line change could break without any other test noticing:
delete by id, the orphaned-adapter list, a guarded write touching only its own row, a lease
transfer touching only its own endpoint's open leases, run-less leases under the row lock,
the holders listing, and the paths a collection takes only at scale (chunked and scanned
lease reads, above 5,000 and 20,000 candidates), forced here by lowering those thresholds.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from inference_endpoints.core.status import CheckpointStatus
from inference_endpoints.persistence import checkpoint_lifecycle as lifecycle
from inference_endpoints.persistence.models import CheckpointLease, utcnow
from inference_endpoints.persistence.registry import Registry
from tests.gc_support import GcWorld


@pytest.fixture
def world(registry: Registry, tmp_path: Path) -> GcWorld:
    return GcWorld.make(registry, tmp_path)


def _open_runs(world: GcWorld, endpoint_id: str) -> list[str | None]:
    with world.registry.session() as s:
        return sorted(s.exec(select(CheckpointLease.flow_run_id).where(
            CheckpointLease.endpoint_id == endpoint_id, col(CheckpointLease.released_at).is_(None))).all(),
            key=str)


def test_delete_by_id_deletes_and_says_so(world: GcWorld) -> None:
    ckpt = world.register_full("tiny")
    answer = lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
    assert answer.newly_deleted and world.status(ckpt.id) == "deleted"
    assert answer.message().startswith(f"Deleted tiny ({ckpt.id}). New endpoints are refused.")
    assert answer.to_dict()["bytes"] == "reclaimable at the next collection"
    again = lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
    assert not again.newly_deleted and again.message().startswith(f"tiny ({ckpt.id}) was already deleted.")


def test_only_available_adapters_on_this_base_are_orphaned(world: GcWorld) -> None:
    base = world.register_full("base")
    other = world.clone(base, "other")
    lora = world.register_lora("tmpl-lora", "base")
    orphan = world.clone(lora, "orphan", base_id=base.id)
    gone = world.clone(lora, "gone", base_id=base.id)
    world.clone(lora, "elsewhere", base_id=other.id)
    lifecycle.delete_checkpoint(world.registry, world.org_id, gone.id)
    lifecycle.delete_checkpoint(world.registry, world.org_id, "tmpl-lora")
    answer = lifecycle.delete_checkpoint(world.registry, world.org_id, base.id)
    assert answer.orphaned_adapters == (orphan.name,)
    assert "LoRA adapters on it can no longer be served: orphan." in answer.message()


def test_marking_one_checkpoint_reclaimed_leaves_the_others(world: GcWorld) -> None:
    a = world.register_full("a")
    b = world.clone(a, "b")
    for ckpt in (a, b):
        lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
        assert lifecycle.mark_reclaiming(world.registry, ckpt.id) == lifecycle.Marked.DONE
    assert lifecycle.mark_reclaimed(world.registry, a.id)
    assert (world.status(a.id), world.status(b.id)) == ("reclaimed", "reclaiming")  # b's bytes still there


def test_a_transfer_moves_only_this_endpoints_open_leases(world: GcWorld) -> None:
    world.register_full("tiny")
    mine, theirs = world.create("mine", "tiny"), world.create("theirs", "tiny")
    world.start(mine.id, "run-1", None)
    world.start(theirs.id, "run-t", None)
    assert lifecycle.transfer_leases(world.registry, mine.id, "run-2")
    assert _open_runs(world, mine.id) == ["run-2"]
    assert _open_runs(world, theirs.id) == ["run-t"]  # another endpoint's lease is never touched
    world.registry.release_leases(mine.id)
    assert lifecycle.transfer_leases(world.registry, mine.id, "run-3")
    assert _open_runs(world, mine.id) == []  # a released lease is not reopened


def test_a_transfer_finishes_when_one_lease_already_has_the_run(world: GcWorld) -> None:
    world.register_full("base")
    world.register_lora("adapter", "base")
    ep = world.create("lora-ep", "adapter")  # two leases: the adapter and its base
    world.start(ep.id, "run-1", None)
    with world.registry.session() as s:  # a half-moved state: one lease already on run-2
        lease = s.exec(select(CheckpointLease).where(CheckpointLease.endpoint_id == ep.id)).first()
        assert lease is not None
        lease.flow_run_id = "run-2"
        s.add(lease)
    assert lifecycle.transfer_leases(world.registry, ep.id, "run-2")
    assert _open_runs(world, ep.id) == ["run-2", "run-2"]


def test_a_run_less_lease_matches_its_empty_run_under_the_row_lock(world: GcWorld) -> None:
    ckpt = world.register_full("tiny")
    ep = world.create("ep", "tiny")  # recorded, never submitted: the lease has no run
    world.registry.release_leases(ep.id)
    lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
    assert lifecycle.mark_reclaiming(world.registry, ckpt.id, ("",)) == lifecycle.Marked.DONE


def test_holders_are_listed_per_checkpoint_and_never_none(world: GcWorld) -> None:
    a = world.register_full("a")
    b, c = world.clone(a, "b"), world.clone(a, "c")
    ep = world.create("ep", "a")
    rows = {row.id: holders for row, holders in lifecycle.list_with_holders(
        world.registry, world.org_id, include_deleted=True)}
    assert {cid: [h.endpoint_id for h in hs] for cid, hs in rows.items()} == {a.id: [ep.id], b.id: [], c.id: []}
    assert rows[a.id][0].label() == "ep (pending)"


def test_candidates_carry_org_and_name_and_run_less_leases_their_age(world: GcWorld) -> None:
    ckpt = world.register_full("tiny")
    before = utcnow().replace(tzinfo=UTC) - timedelta(seconds=5)
    world.create("ep", "tiny")
    lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
    facts = lifecycle.load_facts(world.registry)
    [candidate] = facts.checkpoints
    assert (candidate.org_id, candidate.name, candidate.status) == (world.org_id, "tiny", CheckpointStatus.DELETED)
    [lease] = facts.leases[ckpt.id]
    assert lease.flow_run_id is None and lease.created_at is not None
    assert lease.created_at.tzinfo is not None and before <= lease.created_at <= facts.now


@pytest.mark.parametrize("path", ["chunked", "scanned"])
def test_lease_and_address_reads_at_scale_miss_nothing_and_add_nothing(
        world: GcWorld, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    keep = world.register_full("keep")
    kept = world.create("kept-ep", "keep")  # a lease on an available checkpoint, written first
    world.start(kept.id, "run-kept", "http://10.0.0.9:1/kept")
    deleted, endpoints = [], []
    for i in range(5):
        ckpt = world.clone(keep, f"d{i}")
        ep = world.create(f"ep{i}", ckpt.id)
        world.start(ep.id, f"run-{i}", f"http://10.0.0.9:{i}/ep")
        lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
        deleted.append(ckpt)
        endpoints.append(ep.id)
    monkeypatch.setattr(lifecycle, "IDS_PER_QUERY", 2)
    monkeypatch.setattr(lifecycle, "SCAN_ABOVE", 3 if path == "scanned" else 20_000)
    candidates = lifecycle.load_candidates(world.registry)
    assert sorted(c.id for c in candidates) == sorted(c.id for c in deleted)
    leases = lifecycle.load_leases(world.registry, candidates)
    assert {cid: [lease.flow_run_id for lease in ls] for cid, ls in leases.items()} == {
        c.id: [f"run-{i}"] for i, c in enumerate(deleted)}
    urls = lifecycle.load_backend_urls(world.registry, endpoints)
    assert urls == {ep: f"http://10.0.0.9:{i}/ep" for i, ep in enumerate(endpoints)}

