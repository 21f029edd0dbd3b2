"""Delete, leases and collection against real registries (SQLite and PostgreSQL) and a real store."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.gc import RunState
from inference_endpoints.core.status import CheckpointStatus, EndpointStatus
from inference_endpoints.persistence import checkpoint_lifecycle as lifecycle
from inference_endpoints.persistence.models import Checkpoint
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.collector import Report, Result, collect, collect_steps
from tests.gc_support import GcWorld
from tests.lifecycle_support import put_status

GRACE = 600.0


@pytest.fixture
def world(registry: Registry, tmp_path: Path) -> GcWorld:
    return GcWorld.make(registry, tmp_path)


def run_gc(w: GcWorld, *, dry_run: bool = False, grace: float = GRACE) -> Report:
    return collect(w.registry, w.store, w.prefect, w.backends, dry_run=dry_run, lease_grace_s=grace)


def test_delete_marks_deleted_hides_and_refuses_new_endpoints(world: GcWorld) -> None:
    ckpt = world.register_full("tiny")
    answer = lifecycle.delete_checkpoint(world.registry, world.org_id, "tiny")
    assert answer.newly_deleted and not answer.held
    assert "reclaimed at the next collection" in answer.message()
    assert answer.checkpoint.status == CheckpointStatus.DELETED and answer.checkpoint.deleted_at
    assert [c.id for c in world.registry.list_checkpoints(world.org_id)] == []
    assert [c.id for c in world.registry.list_checkpoints(world.org_id, include_deleted=True)] == [ckpt.id]
    with pytest.raises(RequestInvalid) as exc:
        world.create("ep", "tiny")
    assert exc.value.codes == ["checkpoint_deleted"]
    assert world.bytes_exist(ckpt)  # no byte deletion outside the collector
    again = lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
    assert not again.newly_deleted and "already deleted" in again.message()


def test_delete_unknown_or_other_orgs_checkpoint_is_refused(world: GcWorld) -> None:
    other, _ = world.registry.create_org("other")
    theirs = world.register_full("theirs")
    with world.registry.session() as s:  # move it to the other org
        row = s.get(Checkpoint, theirs.id)
        assert row is not None
        row.org_id = other.id
        s.add(row)
    for ref in ("nope", theirs.id):
        with pytest.raises(RequestInvalid) as exc:
            lifecycle.delete_checkpoint(world.registry, world.org_id, ref)
        assert exc.value.codes == ["checkpoint_not_found"]
    with world.registry.session() as s:
        assert s.get(Checkpoint, theirs.id).status == "available"  # type: ignore[union-attr]


def test_delete_while_served_names_the_holders_and_keeps_serving(world: GcWorld) -> None:
    base = world.register_full("demo-tiny-llama")
    lora = world.register_lora("adapter", "demo-tiny-llama")
    ep = world.create("lora-ep", "adapter")  # leases the adapter *and* its base
    world.start(ep.id, "run-1", "http://127.0.0.1:9001")
    put_status(world.registry, ep.id, EndpointStatus.LOADING)
    answer = lifecycle.delete_checkpoint(world.registry, world.org_id, "demo-tiny-llama")
    assert answer.held and [h.endpoint_name for h in answer.holders] == ["lora-ep"]
    assert answer.holders[0].endpoint_status == "loading" and answer.holders[0].flow_run_id == "run-1"
    assert answer.orphaned_adapters == ("adapter",)
    assert "held by lora-ep (loading)" in answer.message()
    as_json = answer.to_dict()
    assert as_json["bytes"] == "held" and as_json["held_by"][0]["endpoint"] == "lora-ep"
    listed = {row.name: [h.endpoint_name for h in hs] for row, hs in lifecycle.list_with_holders(
        world.registry, world.org_id, include_deleted=True)}
    assert listed == {"demo-tiny-llama": ["lora-ep"], "adapter": ["lora-ep"]}
    ep_row = world.registry.get_endpoint(ep.id)
    assert ep_row is not None and ep_row.status == "loading"  # undisturbed
    report = run_gc(world)
    assert [o.result for o in report.outcomes] == [Result.HELD]
    assert report.outcomes[0].holders[0].endpoint_name == "lora-ep"
    assert world.bytes_exist(base) and world.bytes_exist(lora)
    world.stop(ep.id, "run-1", "http://127.0.0.1:9001")
    report = run_gc(world)
    assert [(o.checkpoint.id, o.result) for o in report.outcomes] == [(base.id, Result.RECLAIMED)]
    assert report.bytes_freed == base.size_bytes > 0
    assert world.status(base.id) == "reclaimed" and not world.bytes_exist(base)
    assert world.bytes_exist(lora)  # still available: never a candidate
    assert run_gc(world).outcomes == []  # reclaimed ones are done for good


def test_load_facts_reads_every_lease_and_then_the_backends(world: GcWorld) -> None:
    keep = world.register_full("keep")
    gone = world.register_full("gone")
    a = world.create("a", "gone")
    world.start(a.id, "run-a", "http://127.0.0.1:9101")
    world.stop(a.id, "run-a", "http://127.0.0.1:9101")
    b = world.create("b", "gone")
    world.start(b.id, "run-b", None)
    world.create("c", "keep")
    lifecycle.delete_checkpoint(world.registry, world.org_id, "gone")
    facts = lifecycle.load_facts(world.registry)
    assert [c.id for c in facts.checkpoints] == [gone.id]
    leases = sorted(facts.leases[gone.id], key=lambda lease: lease.endpoint_name)
    assert [(x.endpoint_name, x.flow_run_id, x.released) for x in leases] == [
        ("a", "run-a", True), ("b", "run-b", False)]
    assert keep.id not in facts.leases
    assert lifecycle.load_backend_urls(world.registry, [a.id, b.id, "ep_gone"]) == {
        a.id: "http://127.0.0.1:9101"}
    put_status(world.registry, a.id, EndpointStatus.STOPPING)
    put_status(world.registry, a.id, EndpointStatus.STOPPED)
    world.registry.remove_endpoint(a.id)  # the lease outlives the record; no address to probe
    assert len(lifecycle.load_facts(world.registry).leases[gone.id]) == 2
    assert lifecycle.load_backend_urls(world.registry, [a.id]) == {}


def test_marking_reclaiming_backs_off_when_the_leases_changed(world: GcWorld) -> None:
    ckpt = world.register_full("tiny")
    ep = world.create("ep", "tiny")
    world.start(ep.id, "run-1", None)
    lifecycle.delete_checkpoint(world.registry, world.org_id, "tiny")
    assert lifecycle.transfer_leases(world.registry, ep.id, "run-2")  # a restart, after planning
    marked = lifecycle.Marked
    assert lifecycle.mark_reclaiming(world.registry, ckpt.id, ("run-1",)) == marked.LEASES_CHANGED
    assert world.status(ckpt.id) == "deleted"  # rolled back
    assert lifecycle.mark_reclaiming(world.registry, ckpt.id, ("run-1", "run-2")) == marked.DONE
    assert not lifecycle.transfer_leases(world.registry, ep.id, "run-3")  # too late now
    assert [lease.flow_run_id for lease in world.registry.open_leases(ckpt.id)] == ["run-2"]


def test_guarded_marks_win_once(world: GcWorld) -> None:
    ckpt = world.register_full("tiny")
    marked = lifecycle.Marked
    assert lifecycle.mark_reclaiming(world.registry, ckpt.id) == marked.NOT_DELETED  # still available
    lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
    assert not lifecycle.mark_reclaimed(world.registry, ckpt.id)  # not reclaiming yet
    assert lifecycle.mark_reclaiming(world.registry, ckpt.id) == marked.DONE
    assert lifecycle.mark_reclaiming(world.registry, ckpt.id) == marked.NOT_DELETED
    assert lifecycle.mark_reclaimed(world.registry, ckpt.id)
    assert not lifecycle.mark_reclaimed(world.registry, ckpt.id)
    row = world.registry.find_checkpoint(world.org_id, ckpt.id)
    assert row is not None and row.status == "reclaimed" and row.reclaimed_at is not None


def test_a_large_backlog_is_collected_a_page_at_a_time(world: GcWorld) -> None:
    template = world.register_full("tmpl")
    rows = [world.clone(template, f"c{i}") for i in range(5)]
    for row in rows:
        lifecycle.delete_checkpoint(world.registry, world.org_id, row.id)
    lifecycle.delete_checkpoint(world.registry, world.org_id, template.id)
    assert lifecycle.mark_reclaiming(world.registry, template.id) == lifecycle.Marked.DONE  # goes first
    first = collect(world.registry, world.store, world.prefect, world.backends, dry_run=False,
                    lease_grace_s=GRACE, max_candidates=2)
    assert len(first.outcomes) == 2 and first.deferred == 4
    assert first.outcomes[0].checkpoint.id == template.id
    second = collect(world.registry, world.store, world.prefect, world.backends, dry_run=False,
                     lease_grace_s=GRACE, max_candidates=2)
    assert second.deferred == 2 and second.to_dict()["deferred"] == 2
    rest = collect(world.registry, world.store, world.prefect, world.backends, dry_run=False,
                   lease_grace_s=GRACE, max_candidates=2)
    assert rest.deferred == 0 and len(rest.outcomes) == 2
    assert {world.status(r.id) for r in [*rows, template]} == {"reclaimed"}


def test_dry_run_writes_nothing(world: GcWorld) -> None:
    ckpt = world.register_full("tiny")
    lifecycle.delete_checkpoint(world.registry, world.org_id, "tiny")
    report = run_gc(world, dry_run=True)
    assert [o.result for o in report.outcomes] == [Result.WOULD_RECLAIM]
    assert report.bytes_freed == 0 and world.bytes_exist(ckpt) and world.status(ckpt.id) == "deleted"


@pytest.mark.parametrize("killed_after", ["marked reclaiming", "bytes deleted"])
def test_a_killed_collection_is_finished_next_time(world: GcWorld, killed_after: str) -> None:
    ckpt = world.register_full("tiny")
    lifecycle.delete_checkpoint(world.registry, world.org_id, "tiny")
    steps = collect_steps(world.registry, world.store, world.prefect, world.backends,
                          dry_run=False, lease_grace_s=GRACE)
    for step in steps:
        if step.endswith(killed_after):
            steps.close()  # the process dies here
            break
    assert world.status(ckpt.id) == "reclaiming"
    assert world.bytes_exist(ckpt) == (killed_after == "marked reclaiming")
    report = run_gc(world)
    [outcome] = report.outcomes
    assert outcome.result == Result.RECLAIMED and "earlier collection" in outcome.detail
    actually_freed = sum(world.store.freed[ckpt.location])
    assert actually_freed == ckpt.size_bytes
    # Only what this run freed is reported: nothing if the killed run had already deleted the bytes.
    assert outcome.bytes_freed == (ckpt.size_bytes if killed_after == "marked reclaiming" else 0)
    assert world.status(ckpt.id) == "reclaimed" and not world.bytes_exist(ckpt)


def test_prefect_down_reclaims_nothing_and_says_why(world: GcWorld) -> None:
    never_leased = world.register_full("never")
    served = world.register_full("served")
    ep = world.create("ep", "served")
    world.start(ep.id, "run-1", "http://127.0.0.1:9001")
    world.stop(ep.id, "run-1", "http://127.0.0.1:9001")
    for name in ("never", "served"):
        lifecycle.delete_checkpoint(world.registry, world.org_id, name)
    world.prefect.down = True
    report = run_gc(world)
    assert {o.result for o in report.outcomes} == {Result.SKIPPED}
    assert report.prefect_error and "Connection refused" in report.prefect_error
    assert all("Prefect unreachable" in o.detail for o in report.outcomes)
    assert world.bytes_exist(never_leased) and world.bytes_exist(served)
    world.prefect.down = False
    assert {o.result for o in run_gc(world).outcomes} == {Result.RECLAIMED}


def test_prefect_client_at_a_closed_port_reclaims_nothing(world: GcWorld) -> None:
    """The real Prefect witness, pointed at a port where nothing listens."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.gc_tasks import PrefectRunStates
    from tests.session_env import _free_port

    ckpt = world.register_full("tiny")
    ep = world.create("ep", "tiny")
    world.start(ep.id, "3f1f6a4e-1111-4a5b-9c1d-0123456789ab", None)
    world.stop(ep.id, "3f1f6a4e-1111-4a5b-9c1d-0123456789ab", None)
    lifecycle.delete_checkpoint(world.registry, world.org_id, "tiny")
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{_free_port()}/api"}):
        report = collect(world.registry, world.store, PrefectRunStates(), world.backends,
                         dry_run=False, lease_grace_s=GRACE)
    [outcome] = report.outcomes
    assert outcome.result == Result.SKIPPED and report.bytes_freed == 0
    assert report.prefect_error and "Connect" in report.prefect_error
    assert "Prefect unreachable" in outcome.detail
    assert world.bytes_exist(ckpt) and world.status(ckpt.id) == "deleted"


def test_prefect_run_fact_mapping() -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Cancelling, Completed, Crashed, Running, Scheduled

    from tasks.gc_tasks import run_fact

    def fact(state: object) -> tuple[RunState, str]:
        f = run_fact(FlowRun(flow_id="3f1f6a4e-1111-4a5b-9c1d-0123456789ab", state=state))
        return f.state, f.label

    assert fact(Running()) == (RunState.ACTIVE, "Running")
    assert fact(Scheduled()) == (RunState.ACTIVE, "Scheduled")
    assert fact(Cancelling()) == (RunState.ACTIVE, "Cancelling")
    assert fact(Completed()) == (RunState.ENDED, "Completed")
    assert fact(Crashed()) == (RunState.ENDED, "Crashed")
    assert fact(None)[0] == RunState.ACTIVE


# ---- path safety -----------------------------------------------------------------------------

def _deleted_with_location(world: GcWorld, location: str) -> Checkpoint:
    ckpt = world.register_full(f"c-{secrets.token_hex(3)}")
    with world.registry.session() as s:
        row = s.get(Checkpoint, ckpt.id)
        assert row is not None
        row.location = location
        s.add(row)
    lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
    return ckpt


def _victim(tmp: Path) -> Path:
    victim = tmp / "outside" / "precious"
    victim.mkdir(parents=True)
    (victim / "weights.bin").write_bytes(b"x" * 100)
    return victim


def test_location_outside_the_root_is_never_deleted(world: GcWorld) -> None:
    victim = _victim(world.tmp)
    rel = os.path.relpath(victim, world.store.root)
    ckpts = [_deleted_with_location(world, loc) for loc in (rel, str(victim), "")]
    report = run_gc(world)
    assert [o.result for o in report.outcomes] == [Result.SKIPPED] * 3
    assert all("unsafe location" in o.detail for o in report.outcomes)
    assert (victim / "weights.bin").read_bytes() == b"x" * 100
    assert {world.status(c.id) for c in ckpts} == {"deleted"}  # never marked reclaiming
    assert report.bytes_freed == 0


def test_location_through_a_symlink_is_never_deleted(world: GcWorld) -> None:
    victim = _victim(world.tmp)
    (world.store.root / world.org_id).mkdir(parents=True)
    (world.store.root / "linked-org").symlink_to(victim.parent)
    (world.store.root / world.org_id / "linked-ckpt").symlink_to(victim)
    for loc in ("linked-org/precious", f"{world.org_id}/linked-ckpt"):
        _deleted_with_location(world, loc)
    report = run_gc(world)
    assert [o.result for o in report.outcomes] == [Result.SKIPPED] * 2
    assert all("symlink" in o.detail for o in report.outcomes)
    assert (victim / "weights.bin").exists()


def test_a_symlink_inside_a_checkpoint_is_removed_not_followed(world: GcWorld) -> None:
    victim = _victim(world.tmp)
    victim.chmod(0o555)
    ckpt = world.register_full("tiny")
    path = world.store.path_of(ckpt.location)
    path.chmod(0o755)
    (path / "escape").symlink_to(victim)
    path.chmod(0o555)
    lifecycle.delete_checkpoint(world.registry, world.org_id, "tiny")
    report = run_gc(world)
    assert [o.result for o in report.outcomes] == [Result.RECLAIMED]
    assert report.bytes_freed == ckpt.size_bytes  # the link's target is not counted
    assert not path.exists() and (victim / "weights.bin").exists()
    assert victim.stat().st_mode & 0o777 == 0o555  # permissions outside untouched


# ---- one event injected at every point of a collection -----------------------------------------
# The random interleavings (test_gc_race.py) cover many schedules; these cover, for the three
# races that matter most, every point of one collection at which the other actor can strike.

def _inject_everywhere(world: GcWorld, setup: Callable[[int], Checkpoint],
                       strike: Callable[[int], None], ok: Callable[[Checkpoint], bool]) -> int:
    """For k = 0, 1, ...: fresh setup, run a collection k steps, strike, finish it; check `ok`."""
    k = 0
    while True:
        ckpt = setup(k)
        steps = collect_steps(world.registry, world.store, world.prefect, world.backends,
                              dry_run=False, lease_grace_s=GRACE)
        finished = False
        for _ in range(k):
            if next(steps, None) is None:
                finished = True
                break
        strike(k)
        for _ in steps:
            pass
        assert ok(ckpt), f"struck after step {k}: {world.status(ckpt.id)}"
        if finished:
            return k
        k += 1


def test_an_engine_that_starts_and_turns_zombie_mid_collection_is_always_seen(world: GcWorld) -> None:
    """Its address is written while its run is active, and read only after the run states."""
    template = world.register_full("tmpl")
    eps: dict[int, str] = {}

    def setup(k: int) -> Checkpoint:
        ckpt = world.clone(template, f"z{k}")
        ep = world.create(f"z{k}", ckpt.id)
        world.prefect.set(f"run-z{k}", "Scheduled")
        world.registry.update_endpoint(ep.id, serve_run_id=f"run-z{k}")
        world.registry.set_lease_run(ep.id, f"run-z{k}")
        lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
        eps[k] = ep.id
        return ckpt

    def strike(k: int) -> None:  # the engine starts, Prefect then calls the run Crashed: a zombie
        world.start(eps[k], f"run-z{k}", f"http://10.9.0.1:{k + 1000}")
        world.prefect.set(f"run-z{k}", "Crashed")

    assert _inject_everywhere(world, setup, strike, world.bytes_exist) >= 6


def test_a_restart_mid_collection_never_loses_its_bytes(world: GcWorld) -> None:
    """Before `reclaiming` the restart wins and the collector backs off; after, it is refused."""
    template = world.register_full("tmpl")
    eps: dict[int, str] = {}
    restarted: dict[int, bool] = {}

    def setup(k: int) -> Checkpoint:
        ckpt = world.clone(template, f"r{k}")
        ep = world.create(f"r{k}", ckpt.id)
        world.start(ep.id, f"run-r{k}", None)
        world.prefect.set(f"run-r{k}", "Crashed")  # crashed, engine gone, lease still open
        lifecycle.delete_checkpoint(world.registry, world.org_id, ckpt.id)
        eps[k] = ep.id
        return ckpt

    def strike(k: int) -> None:
        restarted[k] = lifecycle.transfer_leases(world.registry, eps[k], f"run-r{k}-2")
        if restarted[k]:
            world.prefect.set(f"run-r{k}-2", "Scheduled")

    def ok(ckpt: Checkpoint) -> bool:
        k = int(ckpt.name.removeprefix("r"))
        return world.bytes_exist(ckpt) if restarted[k] else world.status(ckpt.id) == "reclaimed"

    last = _inject_everywhere(world, setup, strike, ok)
    assert any(restarted.values()) and not all(restarted.values()) and last >= 7


def test_a_create_and_delete_between_the_reads_is_always_seen(world: GcWorld) -> None:
    """Candidates are read before leases: a lease taken in between is on a checkpoint not yet
    deleted when the candidates were read, so it is not a candidate this time. (Marking
    `reclaiming` re-checks the leases too; each defence alone passes this test.)"""
    template = world.register_full("tmpl")
    ckpts: dict[int, Checkpoint] = {}

    def setup(k: int) -> Checkpoint:
        ckpts[k] = world.clone(template, f"c{k}")
        return ckpts[k]

    def strike(k: int) -> None:
        ep = world.create(f"c{k}", ckpts[k].id)  # lease taken, no serve run yet
        lifecycle.delete_checkpoint(world.registry, world.org_id, ckpts[k].id)
        assert ep.id

    assert _inject_everywhere(world, setup, strike, world.bytes_exist) >= 2
