"""One garbage collection: candidates → their leases → run states → backend addresses → probes
→ plan (pure) → execute.

Each read covers what an earlier one could have missed (the order is argued in
`gc.py`), and marking a checkpoint `reclaiming` re-reads its leases under the row
lock, backing off if a restart moved them meanwhile. The two witnesses are
injected: `RunStateSource` (Prefect, in production) and `BackendProbe` (HTTP
probes). The whole collection is a generator that yields after every step, so
tests can interleave it with creates, deletes, stops and restarts, or kill it
between any two steps; `collect` simply runs it to the end.

Crash safety: `reclaiming` is written before bytes are deleted and `reclaimed`
after; a collection cut short is finished by the next one (deleting is
idempotent), and only bytes a `reclaim` call really freed are ever reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from inference_endpoints.core.gc import (
    Action,
    CheckpointFact,
    Decision,
    Evidence,
    Facts,
    Holder,
    RunFact,
    checkpoints_to_locate,
    endpoints_of,
    plan,
    runs_to_read,
)
from inference_endpoints.persistence import checkpoint_lifecycle as lifecycle
from inference_endpoints.persistence.models import utcnow
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import CheckpointStore, UnsafePath

# One collection looks at no more checkpoints than this: it bounds the planning time and
# the Prefect reads (one per 200 runs) of a mass delete; the rest waits for the next run.
DEFAULT_MAX_CANDIDATES = 20_000
RunStateSource = Callable[[Sequence[str]], Mapping[str, RunFact]]
BackendProbe = Callable[[Sequence[str]], Mapping[str, bool]]
T = TypeVar("T")


class RunStatesUnavailable(Exception):
    """The run-state source (Prefect) could not be asked; the message says why."""


class Result(StrEnum):
    RECLAIMED = "reclaimed"
    WOULD_RECLAIM = "would reclaim"
    HELD = "held"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Outcome:
    checkpoint: CheckpointFact
    result: Result
    detail: str
    bytes_freed: int = 0  # what this collection's `reclaim` call returned, never an estimate
    holders: tuple[Holder, ...] = ()

    def row(self) -> dict[str, str]:
        detail = self.detail
        if self.holders:
            detail = "held by " + "; ".join(f"{h.endpoint_name}: {h.why}" for h in self.holders)
        return {"checkpoint": self.checkpoint.name, "id": self.checkpoint.id,
                "org": self.checkpoint.org_id, "result": self.result.value,
                "bytes freed": str(self.bytes_freed), "detail": detail}


@dataclass
class Report:
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)
    prefect_error: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    deferred: int = 0  # candidates left for the next collection (past `max_candidates`)

    def of(self, result: Result) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == result]

    @property
    def bytes_freed(self) -> int:
        return sum(o.bytes_freed for o in self.outcomes)

    def counts(self) -> dict[str, int]:
        return {r.value: len(self.of(r)) for r in Result}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: what the flow returns and the CLI prints."""
        return {"dry_run": self.dry_run, "prefect_error": self.prefect_error,
                "counts": self.counts(), "bytes_freed": self.bytes_freed, "deferred": self.deferred,
                "timings_s": self.timings_s, "rows": [o.row() for o in self.outcomes]}


def collect(registry: Registry, store: CheckpointStore, runs: RunStateSource, backends: BackendProbe,
            *, dry_run: bool, lease_grace_s: float, clock: Callable[[], datetime] = utcnow,
            max_candidates: int | None = DEFAULT_MAX_CANDIDATES) -> Report:
    return drive(collect_steps(registry, store, runs, backends, dry_run=dry_run,
                               lease_grace_s=lease_grace_s, clock=clock, max_candidates=max_candidates))


def drive(steps: Generator[str, None, T]) -> T:
    """Run a step generator to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def collect_steps(registry: Registry, store: CheckpointStore, runs: RunStateSource,
                  backends: BackendProbe, *, dry_run: bool, lease_grace_s: float,
                  clock: Callable[[], datetime] = utcnow,
                  max_candidates: int | None = DEFAULT_MAX_CANDIDATES) -> Generator[str, None, Report]:
    """The collection, one step per `yield` (the yielded value names the step just done)."""
    timings: dict[str, float] = {}
    deferred = 0
    with _timed(timings, "load facts"):
        candidates = lifecycle.load_candidates(registry, max_candidates)
        if max_candidates is not None and len(candidates) >= max_candidates:
            deferred = max(lifecycle.count_candidates(registry) - len(candidates), 0)
    yield "candidates loaded"
    with _timed(timings, "load facts"):
        leases = lifecycle.load_leases(registry, candidates)
    yield "leases loaded"
    facts = Facts(candidates, leases, clock())
    evidence = yield from _gather_evidence(registry, facts, runs, backends, lease_grace_s, timings)
    with _timed(timings, "plan"), lifecycle.gc_paused():
        decisions = plan(facts, evidence, lease_grace_s=lease_grace_s)
    yield "planned"
    with _timed(timings, "execute"):
        outcomes = yield from execute_steps(registry, store, decisions, dry_run=dry_run)
    return Report(dry_run, outcomes, evidence.prefect_error, timings, deferred)


def _gather_evidence(registry: Registry, facts: Facts, runs: RunStateSource, backends: BackendProbe,
                     grace_s: float, timings: dict[str, float]) -> Generator[str, None, Evidence]:
    """Run states, then backend addresses, then probes: the order `gc.Evidence` requires."""
    states: Mapping[str, RunFact] | None = None
    with _timed(timings, "read run states"):
        try:
            # Asked even with no run to read: an unreachable Prefect stops the whole collection.
            with lifecycle.gc_paused():
                run_ids = runs_to_read(facts)
            states = runs(run_ids)
        except RunStatesUnavailable as exc:
            error = str(exc)
    yield "run states read"
    if states is None:
        return Evidence(runs=None, prefect_error=error)
    with _timed(timings, "locate backends"):
        with lifecycle.gc_paused():
            located = checkpoints_to_locate(facts, states, lease_grace_s=grace_s)
            endpoint_ids = endpoints_of(facts, located)
        backend_urls = lifecycle.load_backend_urls(registry, endpoint_ids)
    yield "backends located"
    with _timed(timings, "probe backends"):
        answering = backends(sorted(set(backend_urls.values())))
    yield "backends probed"
    return Evidence(runs=states, located=frozenset(located), backend_urls=backend_urls,
                    answering=answering)


def execute_steps(registry: Registry, store: CheckpointStore, decisions: Sequence[Decision],
                  *, dry_run: bool) -> Generator[str, None, list[Outcome]]:
    outcomes: list[Outcome] = []
    for d in decisions:
        if d.action == Action.HOLD:
            outcomes.append(Outcome(d.checkpoint, Result.HELD, d.reason, holders=d.holders))
        elif d.action == Action.SKIP:
            outcomes.append(Outcome(d.checkpoint, Result.SKIPPED, d.reason))
        elif dry_run:
            outcomes.append(Outcome(d.checkpoint, Result.WOULD_RECLAIM,
                                    f"{d.reason} (about {d.checkpoint.size_bytes:,} bytes)"))
        else:
            outcome = yield from _reclaim_steps(registry, store, d)
            outcomes.append(outcome)
    return outcomes


def _reclaim_steps(registry: Registry, store: CheckpointStore,
                   d: Decision) -> Generator[str, None, Outcome]:
    ckpt = d.checkpoint
    try:
        store.path_of(ckpt.location)  # refuse before writing anything
    except UnsafePath as exc:
        return Outcome(ckpt, Result.SKIPPED, f"unsafe location, never deleted: {exc}")
    if d.action == Action.RECLAIM:
        marked = lifecycle.mark_reclaiming(registry, ckpt.id, d.lease_runs)
        if marked != lifecycle.Marked.DONE:
            return Outcome(ckpt, Result.SKIPPED, f"{marked.value}; looked at again next time")
        yield f"{ckpt.id} marked reclaiming"
    try:
        freed = store.reclaim(ckpt.location)
    except UnsafePath as exc:
        return Outcome(ckpt, Result.SKIPPED, f"unsafe location, never deleted: {exc}")
    except OSError as exc:
        return Outcome(ckpt, Result.SKIPPED, f"could not delete its bytes ({exc}); retried next time")
    yield f"{ckpt.id} bytes deleted"
    first = lifecycle.mark_reclaimed(registry, ckpt.id)
    yield f"{ckpt.id} marked reclaimed"
    detail = d.reason if first else f"{d.reason}; another collection marked it reclaimed"
    return Outcome(ckpt, Result.RECLAIMED, detail, bytes_freed=freed)


class _timed:
    """Accumulate wall time per phase into `timings` (phases may be entered several times)."""

    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.started


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
