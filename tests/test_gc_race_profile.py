"""The collector's race profile: restarts, zombies and deletes landing *between* a collection's steps.

The uniform random scheduler in test_gc_race.py rarely lines these up (24 restarts in 1,000
schedules), so two real bugs passed it. This profile runs the same simulation (`Sim`: the
real registry, store and `collect_steps`, the same safety checks after every step) with
weights that follow the collection: a crashed endpoint is restarted while a collector has
read its checkpoint's leases but not yet marked it, or while the checkpoint is
`reclaiming`; deletes come while a collector is open; crashes often leave zombies (Prefect
says ended, the engine still answers). Each interleaving is counted, and the run fails
unless every one happened at least its floor's number of times: a profile that stopped
exercising a race would otherwise pass by accident.

What it catches on its own (checked by hand, see the issue #18 note): `mark_reclaiming`
without its lease re-check under the row lock, and `transfer_leases` accepting a
`reclaiming` checkpoint.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select as sa_select
from sqlmodel import col

from inference_endpoints.persistence.models import Checkpoint
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.collector import Report, Result
from tests.gc_support import GcWorld
from tests.test_gc_race import Sim, SimEndpoint, Templates, play, prepare, reset

DEFAULT_SCHEDULES = 150
SCHEDULES = int(os.environ.get("IE_GC_PROFILE_SCHEDULES", str(DEFAULT_SCHEDULES)))
STEPS = 40
# Per run of the default 150 schedules on one database (scaled for more; a quicker run checks
# safety only): each interleaving at least this often. Measured here: 142, 52, 208, 29, 39 and 259.
FLOORS = {
    "restart in lease window": 50,  # leases read by an open collector, checkpoint not yet marked
    "restart onto reclaiming": 20,  # a transfer attempted while a leased checkpoint is reclaiming
    "restart during collection": 80,  # any restart while a collector is open
    "backed off": 20,  # a collector's mark_reclaiming saw the leases moved and let go
    "zombie probed": 20,  # a collector probed backends while a zombie held one of its candidates
    "delete during collection": 50,  # a delete committed between two steps of an open collection
}
CANDIDATE = ("deleted", "reclaiming")


@dataclass
class CollectorView:
    """What the test knows of one open collection: how far it got and what it loaded."""

    gen: Generator[str, None, Report]
    last: str = "started"
    candidates: frozenset[str] = frozenset()
    leases_read: bool = False
    marked: set[str] = field(default_factory=set)

    def in_lease_window(self, checkpoint_id: str) -> bool:
        return self.leases_read and checkpoint_id in self.candidates and checkpoint_id not in self.marked


@dataclass
class RaceSim(Sim):
    aim: str = "lease window"  # or "reclaiming": which restart window this schedule favours
    views: list[CollectorView] = field(default_factory=list)
    statuses: dict[str, str] | None = None  # checkpoint id -> status; None: read it again
    seen: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLOORS, 0))

    # -- the collection, step by step, as the test sees it ---------------------------------

    def start_collector(self) -> None:
        super().start_collector()
        self.views.append(CollectorView(self.collectors[-1]))

    def advance_collector(self, gen: Generator[str, None, Report]) -> None:
        view = next(v for v in self.views if v.gen is gen)
        reports = len(self.reports)
        super().advance_collector(gen)
        if gen not in self.collectors:  # finished
            self.views.remove(view)
            self.seen["backed off"] += sum(1 for o in self.reports[reports].of(Result.SKIPPED)
                                           if "leases changed" in o.detail)
            return
        view.last = self.trace[-1].removeprefix("  collector: ")
        if view.last == "candidates loaded":
            view.candidates = frozenset(cid for cid, st in self.read_statuses().items() if st in CANDIDATE)
        elif view.last == "leases loaded":
            view.leases_read = True
        elif view.last == "backends probed":
            if any(self._zombie(ep) and set(ep.leased) & view.candidates for ep in self.endpoints):
                self.seen["zombie probed"] += 1
        elif view.last.endswith(" marked reclaiming"):
            view.marked.add(view.last.split()[0])

    def kill_collector(self, gen: Generator[str, None, Report]) -> None:
        super().kill_collector(gen)
        self.views = [v for v in self.views if v.gen is not gen]

    def read_statuses(self) -> dict[str, str]:
        """The checkpoints' statuses as the registry has them now (read once per step at most)."""
        if self.statuses is None:
            with self.world.registry.session() as s:
                self.statuses = dict(s.execute(sa_select(col(Checkpoint.id), col(Checkpoint.status)).where(
                    col(Checkpoint.id).in_([c.id for c in self.checkpoints]))).all())
        return self.statuses

    def reclaiming(self, ep: SimEndpoint) -> bool:
        statuses = self.read_statuses()
        return any(statuses.get(cid) == "reclaiming" for cid in ep.leased)

    def step(self) -> None:
        self.statuses = None
        super().step()

    @staticmethod
    def _zombie(ep: SimEndpoint) -> bool:
        return ep.prefect_ended and ep.engine_alive and not ep.released

    # -- actors that count the interleaving they land in -------------------------------------

    def restart(self, ep: SimEndpoint) -> None:
        if self.views:
            self.seen["restart during collection"] += 1
        if any(v.in_lease_window(cid) for v in self.views for cid in ep.leased):
            self.seen["restart in lease window"] += 1
        if self.reclaiming(ep):
            self.seen["restart onto reclaiming"] += 1
        super().restart(ep)

    def delete(self, ckpt: Checkpoint) -> None:
        if self.views:
            self.seen["delete during collection"] += 1
        super().delete(ckpt)

    def crash(self, ep: SimEndpoint) -> None:
        """Half the crashes leave a zombie: Prefect says Crashed, the engine keeps answering."""
        assert ep.run_id
        ep.phase = "crashed"
        if self.rng.random() < 0.5:
            self._prefect_ends(ep, "Crashed")
        else:
            self._engine_dies(ep)
            if self.rng.random() < 0.5:
                self._prefect_ends(ep, "Crashed")

    # -- weights that follow the collection -----------------------------------------------------

    @property
    def endpoint_cap(self) -> int:
        """Live endpoints at once: fewer when aiming at `reclaiming` (fewer other holders)."""
        return 2 if self.aim == "reclaiming" else 3

    @property
    def collector_weight(self) -> float:
        return 2.5 if self.aim == "reclaiming" else 1.0

    def restart_weight(self, ep: SimEndpoint) -> float:
        if self.reclaiming(ep):
            return 8.0
        if self.aim == "reclaiming":  # wait until a collector marks its checkpoint
            return 0.05
        if any(v.in_lease_window(cid) for v in self.views for cid in ep.leased):
            return 6.0
        return 0.3

    def actions(self) -> list[tuple[float, str, Callable[[], None]]]:
        """Build a few endpoints, crash them, delete under them, collect, restart in the windows."""
        live = [e for e in self.endpoints if e.phase not in ("refused", "failed", "stopped")]
        crashed = [e for e in live if e.phase == "crashed"]
        available = [c for c in self.checkpoints if c.id not in self.deleted]
        pending = [c for c in self.checkpoints if c.id in self.deleted and self.paths[c.id].is_dir()]
        acts: list[tuple[float, str, Callable[[], None]]] = [
            (2.0 if len(live) < self.endpoint_cap and available else 0.05, "new endpoint", self.new_endpoint),
            (3.0 if pending and not self.views else 0.05, "start collector", self.start_collector)]
        for ep in self.endpoints:
            def bind(f: Callable[[SimEndpoint], None], e: SimEndpoint = ep) -> Callable[[], None]:
                return lambda: f(e)
            over = ep.prefect_ended and not ep.engine_alive
            if ep.phase == "planned":
                acts.append((3.0, f"record {ep.name}", bind(self.record)))
            elif ep.phase == "recorded":
                acts.append((3.0, f"submit {ep.name}", bind(self.submit)))
            elif ep.phase == "submitted":
                acts.append((3.0, f"start {ep.name}", bind(self.start)))
            elif ep.phase == "running":
                acts.append((2.0, f"crash {ep.name}", bind(self.crash)))
            elif ep.phase == "crashed" and not over:
                acts.append((1.0 if self.aim == "reclaiming" else 0.5, f"crash progresses {ep.name}",
                             bind(self.crash_progress)))
            elif ep.phase == "crashed" and ep.stopper is None:
                acts.append((self.restart_weight(ep), f"restart {ep.name}", bind(self.restart)))
            if ep.phase in ("recorded", "submitted", "running", "crashed") and ep.stopper is None:
                acts.append((0.1, f"stop {ep.name}", bind(self.begin_stop)))
            if ep.stopper is not None and ep.phase == "stopping":
                acts.append((1.5, f"stop step {ep.name}", bind(self.stop_step)))
        held_by_crashed = {cid for e in crashed for cid in e.leased}
        for ckpt in available:
            weight = (0.2 if self.aim == "reclaiming" else 1.5) if self.views else 0.1
            if ckpt.id in held_by_crashed:  # the deletes that open a window for a restart
                weight += 1.5
            acts.append((weight, f"delete {ckpt.name}", lambda c=ckpt: self.delete(c)))
        for view in self.views:
            # Killed right after marking, a collector leaves the checkpoint `reclaiming` until
            # the next one finishes it: a wider window for a restart onto it.
            kill = 0.8 if self.aim == "reclaiming" and view.last.endswith("marked reclaiming") else 0.1
            acts.append((self.collector_weight, "collector step", lambda g=view.gen: self.advance_collector(g)))
            acts.append((kill, "kill collector", lambda g=view.gen: self.kill_collector(g)))
        return acts


def run_profile_schedule(world: GcWorld, templates: Templates, seed: int) -> RaceSim:
    rng = random.Random(seed)
    sim = RaceSim(world, rng, reset(world, templates),
                  aim="lease window" if rng.random() < 0.4 else "reclaiming")
    play(sim, f"profile seed {seed} ({sim.aim})", STEPS)
    return sim


def test_collection_race_profile_meets_its_floors(registry: Registry, tmp_path: Path) -> None:
    world, templates = prepare(registry, tmp_path)
    started = time.monotonic()
    seen = dict.fromkeys(FLOORS, 0)
    for seed in range(SCHEDULES):
        sim = run_profile_schedule(world, templates, seed)
        for name, n in sim.seen.items():
            seen[name] += n
    print(f"\nrace profile, {SCHEDULES} schedules on {registry.url.split(':')[0]} in "
          f"{time.monotonic() - started:.1f} s: " + ", ".join(f"{k} {v}" for k, v in seen.items()))
    if SCHEDULES < DEFAULT_SCHEDULES:  # a quick run (IE_GC_PROFILE_SCHEDULES): safety checks only
        return
    floors = {k: math.ceil(v * SCHEDULES / DEFAULT_SCHEDULES) for k, v in FLOORS.items()}
    short = {k: f"{seen[k]} < {floor}" for k, floor in floors.items() if seen[k] < floor}
    assert not short, f"the profile no longer exercises these interleavings often enough: {short}"
