"""The race test: creates, deletes, stops, crashes, restarts and collectors (some killed mid-way).

A seeded random scheduler runs at least 1,000 schedules on SQLite and on PostgreSQL.
Every actor works on the real registry (real guarded UPDATEs, real lease rows) and
the real `LocalCheckpointStore` on a tmp dir with tiny files; the collector is the
real `collect_steps` generator, advanced one step at a time so that any actor can
run between any two of its steps, and closed at random to model a collector killed
after writing `reclaiming` and before deleting bytes, or after deleting bytes and
before writing `reclaimed`.

Two fakes stand in for the outside world: `FakePrefect` (run states) and
`FakeBackends` (which engines still answer). They are the collector's witnesses,
injected because the planner is pure: with a real Prefect server and real engines,
1,000 interleavings would take hours and could not be replayed from a seed. The
fakes also let the test model the witnesses' known failure modes: a run Prefect
calls Crashed whose engine still answers (zombie), and an engine that died while
Prefect still says Running.

Checked after every step: no checkpoint's bytes are gone while an endpoint run
that leased it may still read them (recorded but not yet submitted, scheduled,
running, stopping, restarted, or a zombie). Checked at the end, after every run
ended and one final collection: every deleted checkpoint was reclaimed exactly once
(one `reclaim` call freed its bytes), no available checkpoint lost a byte, and no
collection ever reported bytes it did not free.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, text
from sqlalchemy import select as sa_select
from sqlmodel import col

from inference_endpoints.adapters.runtime import model_root_resolver
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.gc import RunFact
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.persistence import checkpoint_lifecycle as lifecycle
from inference_endpoints.persistence.db import get_engine, normalize_url
from inference_endpoints.persistence.models import (
    ActivityEvent,
    Checkpoint,
    CheckpointLease,
    Endpoint,
    new_id,
    utcnow,
)
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.collector import (
    Report,
    Result,
    RunStatesUnavailable,
    collect,
    collect_steps,
)
from inference_endpoints.services.operations import Plan, plan_create
from tests.gc_support import GcWorld

SCHEDULES = int(os.environ.get("IE_GC_RACE_SCHEDULES", "1000"))
STEPS = 20
GRACE_S = 60.0
TICK_S = 7.0  # simulated seconds per scheduler step: leases outgrow the grace within a schedule
REFUSED = {"checkpoint_deleted", "base_checkpoint_unavailable"}
# How likely each kind of step is when possible. Collector steps are not much likelier than
# the others, so that starts, crashes and restarts often land between two of them.
W = {"new": 1.2, "collector": 1.0, "record": 2.0, "submit": 1.5, "start": 1.5, "crash": 0.6,
     "crash progresses": 0.7, "restart": 1.5, "stop": 0.5, "stop step": 1.5, "delete": 0.4,
     "collector step": 2.5, "kill collector": 0.25}


# ---- the simulated endpoint: ground truth the collector never sees -------------------------

@dataclass
class SimEndpoint:
    name: str
    target: Checkpoint
    plan: Plan | None = None
    endpoint_id: str | None = None
    leased: tuple[str, ...] = ()
    phase: str = "planned"  # planned recorded submitted running stopping crashed stopped refused failed
    run_id: str | None = None
    url: str | None = None
    engine_alive: bool = False
    prefect_ended: bool = False
    released: bool = False
    stopper: Iterator[None] | None = None

    def may_read(self) -> bool:
        """Could a run of this endpoint still read its checkpoints, now or later?"""
        waiting_for_run = self.phase == "recorded"
        run_not_over = self.run_id is not None and not self.prefect_ended
        return waiting_for_run or run_not_over or self.engine_alive


@dataclass
class Sim:
    world: GcWorld
    rng: random.Random
    checkpoints: list[Checkpoint]
    deleted: set[str] = field(default_factory=set)  # ids whose delete committed
    endpoints: list[SimEndpoint] = field(default_factory=list)
    collectors: list[Generator[str, None, Report]] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    offset_s: float = 0.0
    counter: int = 0
    trace: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    restarts: int = 0

    def __post_init__(self) -> None:
        self.paths = {c.id: self.world.store.root / c.location for c in self.checkpoints}

    def clock(self) -> datetime:
        return utcnow() + timedelta(seconds=self.offset_s)

    # -- actors ------------------------------------------------------------------------------

    def new_endpoint(self) -> None:
        self.counter += 1
        ep = SimEndpoint(f"ep-{self.counter}", self.rng.choice(self.checkpoints))
        w = self.world
        try:
            ep.plan = plan_create(w.registry, w.org_id, CreateRequest(ep.name, ep.target.id, "cpu-dev",
                                                                     512, "float32"),
                                  model_root_resolver(w.tmp / "run"))
        except RequestInvalid as exc:
            assert set(exc.codes) <= REFUSED, exc.codes
            assert {ep.target.id, ep.target.base_checkpoint_id} & self.deleted, "refused while available"
            ep.phase = "refused"
        self.endpoints.append(ep)

    def record(self, ep: SimEndpoint) -> None:
        assert ep.plan is not None
        leased = (ep.target.id, *([ep.target.base_checkpoint_id] if ep.target.base_checkpoint_id else []))
        deleted_before = self.deleted & set(leased)
        w = self.world
        try:
            row = w.registry.record_endpoint(w.org_id, ep.plan.request, ep.plan.spec,
                                             endpoint_id=ep.plan.endpoint_id, idempotency_key=None)
        except RequestInvalid as exc:
            assert exc.codes == ["checkpoint_deleted"]
            assert self.deleted & set(leased), "lease refused while every checkpoint was available"
            ep.phase = "refused"
            return
        assert not deleted_before, f"{ep.name} leased {deleted_before} after its delete committed"
        ep.endpoint_id, ep.leased, ep.phase = row.id, leased, "recorded"

    def submit(self, ep: SimEndpoint) -> None:
        assert ep.endpoint_id
        ep.run_id = new_id("run")
        self.world.prefect.set(ep.run_id, "Scheduled")
        self.world.registry.update_endpoint(ep.endpoint_id, serve_run_id=ep.run_id)
        self.world.registry.set_lease_run(ep.endpoint_id, ep.run_id)
        ep.phase = "submitted"

    def start(self, ep: SimEndpoint) -> None:
        """The serve run starts its engine (which reads the bytes), then records the address."""
        assert ep.endpoint_id and ep.run_id
        for cid in ep.leased:
            assert self.paths[cid].is_dir(), f"{ep.name} started on reclaimed {cid}"
        ep.url = f"http://10.0.0.1:{8000 + self.counter}/{ep.name}"
        ep.engine_alive = True
        self.world.backends.add(ep.url)
        self.world.prefect.set(ep.run_id, "Running")
        self.world.registry.update_endpoint(ep.endpoint_id, backend_url=ep.url)
        ep.phase = "running"

    def stop_steps(self, ep: SimEndpoint) -> Iterator[None]:
        """Stop as stop-endpoint does: cancel, wait until the run ended and nothing answers, release."""
        assert ep.endpoint_id
        ep.phase = "stopping"
        if ep.run_id and not ep.prefect_ended:
            if ep.engine_alive:
                self.world.prefect.set(ep.run_id, "Cancelling")
                yield
                self._engine_dies(ep)
                yield
            self._prefect_ends(ep, "Cancelled")
            yield
        elif ep.engine_alive:  # a zombie: stop waits until it stops answering
            self._engine_dies(ep)
            yield
        self.world.registry.release_leases(ep.endpoint_id)
        ep.released, ep.phase = True, "stopped"

    def crash(self, ep: SimEndpoint) -> None:
        """The serve run dies without releasing its lease; its engine may linger (zombie)."""
        assert ep.run_id
        ep.phase = "crashed"
        order = self.rng.random()
        if order < 0.4:  # Prefect notices first; the engine keeps answering for a while
            self._prefect_ends(ep, "Crashed")
        elif order < 0.7:  # the engine dies first; the flow reports Failed later
            self._engine_dies(ep)
        else:
            self._engine_dies(ep)
            self._prefect_ends(ep, "Crashed")

    def restart(self, ep: SimEndpoint) -> None:
        """Self-healing: a new serve run takes over the crashed one's leases, if still allowed."""
        assert ep.endpoint_id and not ep.engine_alive and ep.prefect_ended
        run_id = new_id("run")
        if not lifecycle.transfer_leases(self.world.registry, ep.endpoint_id, run_id):
            assert any(self.world.status(cid) in ("reclaiming", "reclaimed") for cid in ep.leased)
            ep.phase = "failed"  # the bytes are going away: the endpoint cannot come back
            return
        self.world.prefect.set(run_id, "Scheduled")
        self.world.registry.update_endpoint(ep.endpoint_id, serve_run_id=run_id, backend_url=None)
        ep.run_id, ep.url, ep.prefect_ended, ep.phase = run_id, None, False, "submitted"
        self.restarts += 1

    def crash_progress(self, ep: SimEndpoint) -> None:
        if ep.engine_alive:
            self._engine_dies(ep)
        else:
            self._prefect_ends(ep, "Failed")

    def _engine_dies(self, ep: SimEndpoint) -> None:
        ep.engine_alive = False
        if ep.url:
            self.world.backends.discard(ep.url)

    def _prefect_ends(self, ep: SimEndpoint, state: str) -> None:
        assert ep.run_id
        self.world.prefect.set(ep.run_id, state)
        ep.prefect_ended = True

    def delete(self, ckpt: Checkpoint) -> None:
        lifecycle.delete_checkpoint(self.world.registry, self.world.org_id, ckpt.id)
        self.deleted.add(ckpt.id)

    def start_collector(self) -> None:
        down = self.rng.random() < 0.15
        prefect = self.world.prefect

        def runs(ids: Sequence[str]) -> dict[str, RunFact]:
            if down:
                raise RunStatesUnavailable("ConnectError: connection refused")
            return prefect(ids)

        self.collectors.append(collect_steps(
            self.world.registry, self.world.store, runs, self.world.backends, dry_run=False,
            lease_grace_s=GRACE_S, clock=self.clock))

    def advance_collector(self, gen: Generator[str, None, Report]) -> None:
        try:
            self.trace.append(f"  collector: {next(gen)}")
        except StopIteration as stop:
            self.collectors.remove(gen)
            self.reports.append(stop.value)
            if stop.value.prefect_error:
                assert all("earlier collection" in o.detail for o in stop.value.of(Result.RECLAIMED))

    def kill_collector(self, gen: Generator[str, None, Report]) -> None:
        gen.close()
        self.collectors.remove(gen)

    # -- the scheduler -------------------------------------------------------------------------

    def actions(self) -> list[tuple[float, str, Callable[[], None]]]:
        """Every action possible now, with a weight: creates and collector steps are common."""
        acts: list[tuple[float, str, Callable[[], None]]] = [
            (W["new"], "new endpoint", self.new_endpoint), (W["collector"], "start collector", self.start_collector)]
        for ep in self.endpoints:
            def bind(f: Callable[[SimEndpoint], None], e: SimEndpoint = ep) -> Callable[[], None]:
                return lambda: f(e)
            if ep.phase == "planned":
                acts.append((W["record"], f"record {ep.name}", bind(self.record)))
            elif ep.phase == "recorded":
                acts.append((W["submit"], f"submit {ep.name}", bind(self.submit)))
            elif ep.phase == "submitted":
                acts.append((W["start"], f"start {ep.name}", bind(self.start)))
            elif ep.phase == "running":
                acts.append((W["crash"], f"crash {ep.name}", bind(self.crash)))
            elif ep.phase == "crashed" and not (ep.prefect_ended and not ep.engine_alive):
                acts.append((W["crash progresses"], f"crash progresses {ep.name}", bind(self.crash_progress)))
            elif ep.phase == "crashed" and ep.stopper is None:
                acts.append((W["restart"], f"restart {ep.name}", bind(self.restart)))
            if ep.phase in ("recorded", "submitted", "running", "crashed") and ep.stopper is None:
                acts.append((W["stop"], f"stop {ep.name}", bind(self.begin_stop)))
            if ep.stopper is not None and ep.phase == "stopping":
                acts.append((W["stop step"], f"stop step {ep.name}", bind(self.stop_step)))
        for ckpt in self.checkpoints:
            if ckpt.id not in self.deleted:
                acts.append((W["delete"], f"delete {ckpt.name}", lambda c=ckpt: self.delete(c)))
        for gen in self.collectors:
            acts.append((W["collector step"], "collector step", lambda g=gen: self.advance_collector(g)))
            acts.append((W["kill collector"], "kill collector", lambda g=gen: self.kill_collector(g)))
        return acts

    def begin_stop(self, ep: SimEndpoint) -> None:
        ep.stopper = self.stop_steps(ep)
        self.stop_step(ep)

    def stop_step(self, ep: SimEndpoint) -> None:
        assert ep.stopper is not None
        next(ep.stopper, None)

    def step(self) -> None:
        acts = self.actions()
        [(_, name, act)] = self.rng.choices(acts, weights=[w for w, _, _ in acts])
        self.trace.append(name)
        act()
        self.offset_s += TICK_S
        self.check_safety()

    def check_safety(self) -> None:
        for ep in self.endpoints:
            if ep.may_read():
                for cid in ep.leased:
                    assert self.paths[cid].is_dir(), (
                        f"bytes of {cid} reclaimed while {ep.name} ({ep.phase}) may read them")
        for ckpt in self.checkpoints:
            if ckpt.id not in self.deleted:
                assert self.paths[ckpt.id].is_dir(), f"available {ckpt.name} lost its bytes"

    def finish(self) -> None:
        """Every run ends, open collectors complete, time passes, one final collection."""
        for gen in list(self.collectors):
            while gen in self.collectors:
                self.advance_collector(gen)
        for ep in self.endpoints:
            if ep.phase == "crashed":
                while ep.engine_alive or not ep.prefect_ended:
                    self.crash_progress(ep)
                if self.rng.random() < 0.5:  # sometimes someone stops it; often nobody does
                    continue
            if ep.phase in ("recorded", "submitted", "running", "crashed", "stopping"):
                if ep.stopper is None:
                    ep.stopper = self.stop_steps(ep)
                for _ in ep.stopper:
                    pass
            self.check_safety()
        self.offset_s += GRACE_S * 2
        final = collect(self.world.registry, self.world.store, self.world.prefect, self.world.backends,
                        dry_run=False, lease_grace_s=GRACE_S, clock=self.clock)
        self.reports.append(final)
        assert not final.of(Result.HELD) and not final.of(Result.SKIPPED), [o.row() for o in final.outcomes]

    def check_final(self) -> None:
        store = self.world.store
        with self.world.registry.session() as s:
            statuses = dict(s.execute(sa_select(col(Checkpoint.id), col(Checkpoint.status))).all())
        for ckpt in self.checkpoints:
            freed = [n for n in store.freed.get(ckpt.location, []) if n > 0]
            if ckpt.id in self.deleted:
                assert statuses[ckpt.id] == "reclaimed", ckpt.name
                assert not self.paths[ckpt.id].exists()
                assert freed == [ckpt.size_bytes], f"{ckpt.name} freed {freed}: not exactly once"
            else:
                assert statuses[ckpt.id] == "available" and self.paths[ckpt.id].is_dir()
                assert freed == []
        reported: dict[str, int] = {}
        for report in self.reports:
            for o in report.outcomes:
                reported[o.checkpoint.location] = reported.get(o.checkpoint.location, 0) + o.bytes_freed
        for location, n in reported.items():
            assert n <= sum(store.freed.get(location, [])), f"reported {n} bytes never freed at {location}"


# ---- per-database setup, reused across schedules ----------------------------------------------

@dataclass
class Templates:
    full: Checkpoint
    lora: Checkpoint


def prepare(registry: Registry, tmp: Path) -> tuple[GcWorld, Templates]:
    if not registry.url.startswith("sqlite"):
        db = normalize_url(registry.url).rsplit("/", 1)[1]
        with get_engine(registry.url).begin() as conn:  # commits need not wait for the disk in tests
            conn.execute(text(f'ALTER DATABASE "{db}" SET synchronous_commit = off'))
        get_engine(registry.url).dispose()
    world = GcWorld.make(registry, tmp)
    full = world.register_full("demo-tiny-llama")
    lora = world.register_lora("tmpl-lora", "demo-tiny-llama")
    return world, Templates(full, lora)


def reset(world: GcWorld, templates: Templates) -> list[Checkpoint]:
    """Empty the registry but for the templates; three fresh checkpoints: a, b and a LoRA on a."""
    keep = [templates.full.id, templates.lora.id]
    world.store.freed.clear()
    world.prefect.states.clear()
    world.backends.answering.clear()
    a = world.clone_row(templates.full, "a")
    b = world.clone_row(templates.full, "b")
    lora = world.clone_row(templates.lora, "a-lora", base_id=a.id)
    with world.registry.session() as s:
        for model in (ActivityEvent, CheckpointLease, Endpoint):
            s.execute(delete(model))
        s.execute(delete(Checkpoint).where(col(Checkpoint.base_checkpoint_id).is_not(None),
                                           col(Checkpoint.id).not_in(keep)))
        s.execute(delete(Checkpoint).where(col(Checkpoint.id).not_in(keep)))
        s.add(a)
        s.add(b)
        s.flush()
        s.add(lora)
    return [a, b, lora]


def play(sim: Sim, label: str, steps: int = STEPS) -> None:
    """Run a schedule to its end and check it; a failure names the schedule and its last steps."""
    try:
        for _ in range(steps):
            sim.step()
        sim.finish()
        sim.check_final()
    except AssertionError as exc:
        tail = "\n".join(sim.trace[-40:])
        raise AssertionError(f"{label}: {exc}\nlast steps:\n{tail}") from exc


def run_schedule(world: GcWorld, templates: Templates, seed: int) -> Sim:
    sim = Sim(world, random.Random(seed), reset(world, templates))
    play(sim, f"seed {seed}")
    return sim


def test_random_interleavings(registry: Registry, tmp_path: Path) -> None:
    world, templates = prepare(registry, tmp_path)
    started, cpu = time.monotonic(), time.process_time()
    reclaimed = held = killed = restarts = backed_off = 0
    for seed in range(SCHEDULES):
        sim = run_schedule(world, templates, seed)
        reclaimed += len(sim.deleted)
        held += sum(len(r.of(Result.HELD)) for r in sim.reports)
        killed += sum(1 for line in sim.trace if line == "kill collector")
        restarts += sim.restarts
        backed_off += sum(1 for r in sim.reports for o in r.of(Result.SKIPPED) if "leases changed" in o.detail)
    print(f"\n{SCHEDULES} schedules on {registry.url.split(':')[0]} in {time.monotonic() - started:.1f} s "
          f"({time.process_time() - cpu:.1f} s CPU in this process): "
          f"{reclaimed} checkpoints reclaimed, {held} holds, {killed} collectors killed, "
          f"{restarts} restarts, {backed_off} reclaims backed off as leases moved")
    if SCHEDULES >= 500:  # the schedules really exercised them (a quick run may not)
        assert reclaimed and held and killed and restarts


# ---- real threads: create-with-lease against delete against collectors ------------------------

THREAD_ROUNDS = int(os.environ.get("IE_GC_THREAD_ROUNDS", "12"))
CREATORS = 3


@dataclass
class ThreadedRound:
    """One round: creators, a deleter and a collector start together on their own threads."""

    world: GcWorld
    a: Checkpoint
    lora: Checkpoint
    rng: random.Random
    created: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)  # ep, run, leased
    errors: list[BaseException] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    first_create: threading.Event = field(default_factory=threading.Event)
    deleted: list[bool] = field(default_factory=list)  # each delete's `newly_deleted`
    collections: int = 0  # collections that ran to the end during the round

    def __post_init__(self) -> None:
        self.barrier = threading.Barrier(CREATORS + 2)

    def guarded(self, fn: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                self.barrier.wait()
                fn()
            except BaseException as exc:
                self.errors.append(exc)
        return threading.Thread(target=run)

    def creator(self, worker: int) -> None:
        r = random.Random(self.rng.randrange(10**6) + worker)
        for i in range(4):
            target = r.choice([self.a, self.lora])
            try:
                ep = self.world.create(f"t{worker}-{i}", target.id)
            except RequestInvalid as exc:
                assert set(exc.codes) <= REFUSED, exc.codes
                continue
            run_id = new_id("run")
            self.world.start(ep.id, run_id, f"http://10.0.0.2:{worker}{i}")
            leased = (target.id, *([self.a.id] if target is self.lora else []))
            self.created.append((ep.id, run_id, leased))
            self.first_create.set()

    def deleter(self) -> None:
        """Deletes once a first create committed, so every round races the others' creates."""
        self.first_create.wait(30)
        time.sleep(self.rng.uniform(0, 0.05))
        for ckpt in (self.a, self.lora):
            answer = lifecycle.delete_checkpoint(self.world.registry, self.world.org_id, ckpt.id)
            self.deleted.append(answer.newly_deleted)

    def collector(self) -> None:
        while not self.done.is_set() or not self.collections:
            collect(self.world.registry, self.world.store, self.world.prefect, self.world.backends,
                    dry_run=False, lease_grace_s=0.0)
            self.collections += 1

    def run(self) -> None:
        workers = [self.guarded(lambda w=w: self.creator(w)) for w in range(CREATORS)]
        workers.append(self.guarded(self.deleter))
        collector = self.guarded(self.collector)
        for t in [*workers, collector]:
            t.start()
        for t in workers:
            t.join(60)
        self.done.set()
        collector.join(60)
        assert not self.errors, self.errors


def test_threaded_create_delete_collect(registry: Registry, tmp_path: Path) -> None:
    """Real concurrency: creators, a deleter and a collector on their own threads and connections.

    No run ends during the race, so a checkpoint that any create leased must keep
    its bytes; afterwards everything stops and one collection reclaims both.
    """
    world, templates = prepare(registry, tmp_path)
    served = 0
    for round_no in range(THREAD_ROUNDS):
        a, _b, lora = reset(world, templates)
        race = ThreadedRound(world, a, lora, random.Random(round_no))
        race.run()
        # Work in every round, not just somewhere in the run: creates, both deletes, a collection.
        assert race.created, f"round {round_no}: no create"
        assert race.deleted == [True, True], f"round {round_no}: deletes {race.deleted}"
        assert race.collections >= 1, f"round {round_no}: no collection"
        served += len(race.created)
        for _ep, _run, leased in race.created:
            for cid in leased:
                ckpt = a if cid == a.id else lora
                assert world.bytes_exist(ckpt), f"round {round_no}: {cid} reclaimed under a running endpoint"
                assert world.status(cid) == "deleted"
        for ep_id, run_id, _leased in race.created:
            world.stop(ep_id, run_id, None)
        world.backends.answering.clear()
        final = collect(world.registry, world.store, world.prefect, world.backends,
                        dry_run=False, lease_grace_s=0.0)
        assert not final.of(Result.HELD), [o.row() for o in final.outcomes]
        for ckpt in (a, lora):
            assert world.status(ckpt.id) == "reclaimed" and not world.bytes_exist(ckpt)
            assert [n for n in world.store.freed.get(ckpt.location, []) if n > 0] == [ckpt.size_bytes]
    assert served  # some creates won the race
