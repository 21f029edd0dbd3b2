"""Pure garbage-collection planner: which deleted checkpoints may lose their bytes, and why not.

No I/O, no Prefect: the caller gathers facts (candidate checkpoints, every lease
ever taken on them, Prefect's run states, which backends still answer) and gets
one decision per checkpoint with a reason. The rule, from the issue:

    a `deleted` checkpoint is reclaimed only when every lease ever taken on it
    belongs to a run that is over: Prefect reports a terminal state *and* the
    endpoint's backend no longer answers.

"Ended in Prefect" alone does not prove the engine is gone (forced cancels,
heartbeat-crashed runs), hence the backend probe. When in doubt, keep the bytes:
losing weights an endpoint serves is worse than reclaiming late.

The caller must gather in this order: candidates, their leases, run states, backend
addresses, probes (see `Evidence`). Each later read covers what an earlier one could
have missed: a lease taken after the candidates were read needs an `available`
checkpoint; an address written after the lease read was written by a run whose state
is read later still.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from itertools import chain
from operator import itemgetter
from typing import NamedTuple

from inference_endpoints.core.status import CheckpointStatus


class RunState(StrEnum):
    ACTIVE = "active"  # scheduled, pending, running, paused, cancelling, ...
    ENDED = "ended"  # COMPLETED, FAILED, CRASHED, CANCELLED
    MISSING = "missing"  # Prefect has no such run (deleted, or never a Prefect run)


@dataclass(frozen=True)
class RunFact:
    state: RunState
    label: str  # Prefect's state name, for reasons ("Running", "Crashed", ...)


class CheckpointFact(NamedTuple):
    """A NamedTuple, like `LeaseFact`: a collection may load a million of them."""

    id: str
    org_id: str
    name: str
    location: str
    status: CheckpointStatus
    size_bytes: int


class LeaseFact(NamedTuple):
    checkpoint_id: str
    endpoint_id: str
    endpoint_name: str
    flow_run_id: str | None
    released: bool
    created_at: datetime | None  # needed only while flow_run_id is None


@dataclass(frozen=True)
class Facts:
    """Candidates (`deleted` or `reclaiming`) and every lease ever taken on them."""

    checkpoints: Sequence[CheckpointFact]
    leases: Mapping[str, Sequence[LeaseFact]]
    now: datetime


@dataclass(frozen=True)
class Evidence:
    """What was learnt after the facts, in this order (the order matters, see below).

    1. `runs`: Prefect's state of each lease's run; None if Prefect could not be reached.
    2. `backend_urls`: the backend address of the endpoints of the `located` checkpoints
       (those that have one: a removed endpoint has none), read from the registry after
       the run states, so an address written by a run that has since ended is always seen.
    3. `answering`: whether anything still answers at those addresses.
    """

    runs: Mapping[str, RunFact] | None
    located: Collection[str] = frozenset()  # checkpoint ids
    backend_urls: Mapping[str, str] = field(default_factory=dict)  # endpoint id -> address
    answering: Mapping[str, bool] = field(default_factory=dict)
    prefect_error: str | None = None


class Action(StrEnum):
    RECLAIM = "reclaim"  # deleted, and every run that read it is over
    FINISH = "finish"  # found `reclaiming`: an earlier collection decided and was cut short
    HOLD = "hold"  # an endpoint run may still read it
    SKIP = "skip"  # cannot decide now (Prefect unreachable)


class Holder(NamedTuple):
    endpoint_name: str
    endpoint_id: str
    flow_run_id: str | None
    why: str


class Decision(NamedTuple):
    checkpoint: CheckpointFact
    action: Action
    reason: str
    holders: tuple[Holder, ...] = ()
    # RECLAIM: the leases' runs this decision saw ("" for none), sorted. Marking `reclaiming`
    # re-reads them under the row lock and backs off if any lease appeared or changed.
    lease_runs: tuple[str, ...] = ()


def plan(facts: Facts, evidence: Evidence, *, lease_grace_s: float) -> list[Decision]:
    """One decision per candidate checkpoint, in the order given."""
    return [_decide(c, facts.leases.get(c.id, ()), facts.now, evidence, lease_grace_s)
            for c in facts.checkpoints]


def _decide(ckpt: CheckpointFact, leases: Sequence[LeaseFact], now: datetime,
            evidence: Evidence, grace_s: float) -> Decision:
    if ckpt.status == CheckpointStatus.RECLAIMING:
        # Only a collector that found every run over writes `reclaiming` (and only if no lease
        # changed meanwhile); no lease can be taken on it since: finish the job.
        return Decision(ckpt, Action.FINISH, "an earlier collection marked it reclaiming and "
                        "stopped before finishing; deleting what is left")
    if evidence.runs is None:
        return Decision(ckpt, Action.SKIP, f"Prefect unreachable ({evidence.prefect_error}); "
                        "nothing is reclaimed while run states are unknown")
    if ckpt.id in evidence.located:
        undecided = _not_plainly_over(leases, evidence.runs, evidence.backend_urls, evidence.answering)
        holders = tuple(h for h in (_holder(lease, now, evidence, grace_s) for lease in undecided) if h)
    else:  # held by run states alone, or else (a caller's mistake) its addresses are unknown
        holders = tuple(Holder(lease.endpoint_name, lease.endpoint_id, lease.flow_run_id, why)
                        for lease in leases if (why := _run_blocks(lease, now, evidence, grace_s)))
        holders = holders or tuple(
            Holder(lease.endpoint_name, lease.endpoint_id, lease.flow_run_id,
                   "its backend address was not checked") for lease in leases)
    if holders:
        names = ", ".join(sorted({h.endpoint_name for h in holders}))
        return Decision(ckpt, Action.HOLD, f"held by {names}", holders)
    runs = tuple(sorted(lease.flow_run_id or "" for lease in leases))
    if not leases:
        return Decision(ckpt, Action.RECLAIM, "no endpoint ever leased it", lease_runs=runs)
    return Decision(ckpt, Action.RECLAIM,
                    f"all {len(leases)} run(s) that leased it ended and their backends are gone",
                    lease_runs=runs)


def _holder(lease: LeaseFact, now: datetime, evidence: Evidence, grace_s: float) -> Holder | None:
    """Why this lease still keeps the bytes, or None if its run is over."""
    why = _run_blocks(lease, now, evidence, grace_s) or _backend_blocks(lease, evidence)
    if why is None:
        return None
    return Holder(lease.endpoint_name, lease.endpoint_id, lease.flow_run_id, why)


def _backend_blocks(lease: LeaseFact, evidence: Evidence) -> str | None:
    url = evidence.backend_urls.get(lease.endpoint_id)
    if url is not None and evidence.answering.get(url, True):
        return f"its backend {url} still answers"
    return None


def _not_plainly_over(leases: Sequence[LeaseFact], runs: Mapping[str, RunFact],
                      urls: Mapping[str, str] | None, answering: Mapping[str, bool]) -> list[LeaseFact]:
    """Drop the common case (run ended, and nothing answers) without building any reason text.

    Keeps every lease `_holder` might hold on; with `urls=None` judges run states only.
    One call per checkpoint, no call per lease: this loop sees every lease, a million
    of them in a large collection.
    """
    ended, missing = RunState.ENDED, RunState.MISSING
    get_run = runs.get
    rest = []
    for lease in leases:
        run_id = lease.flow_run_id
        run = get_run(run_id) if run_id is not None else None
        if run is not None and (run.state is ended or (run.state is missing and lease.released)):
            if urls is None:
                continue
            url = urls.get(lease.endpoint_id)
            if url is None or not answering.get(url, True):
                continue
        rest.append(lease)
    return rest


def _run_blocks(lease: LeaseFact, now: datetime, evidence: Evidence, grace_s: float) -> str | None:
    if lease.flow_run_id is None:
        age = _age_s(lease.created_at, now)
        if age is None or age < grace_s:
            return (f"being created: no serve run yet (lease {_fmt_age(age)} old, "
                    f"waiting up to {grace_s:.0f} s)")
        if not lease.released:
            return (f"lease open for {_fmt_age(age)} with no serve run: its create run may have "
                    f"died; stop the endpoint to release it")
        return None  # released, and too old for a serve run still to be on its way
    assert evidence.runs is not None
    run = evidence.runs.get(lease.flow_run_id)
    if run is None:
        return f"state of run {lease.flow_run_id} unknown"
    if run.state == RunState.ACTIVE:
        return f"run {lease.flow_run_id} is {run.label}"
    if run.state == RunState.MISSING and not lease.released:
        return f"run {lease.flow_run_id} is not in Prefect and its lease is still open"
    # ENDED, or MISSING after a release (release happens only once the end was confirmed).
    return None


def _age_s(ts: datetime | None, now: datetime) -> float | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=now.tzinfo)
    return (now - ts).total_seconds()


def _fmt_age(age: float | None) -> str:
    return "?" if age is None else f"{max(age, 0):.0f} s"


def runs_to_read(facts: Facts) -> list[str]:
    """Distinct flow runs of the candidates' leases, unordered (C-level iteration: a million leases)."""
    run_ids = set(map(_RUN_ID, chain.from_iterable(facts.leases.values())))
    run_ids.discard(None)
    return list(run_ids)


_RUN_ID = itemgetter(LeaseFact._fields.index("flow_run_id"))


def checkpoints_to_locate(facts: Facts, runs: Mapping[str, RunFact], *, lease_grace_s: float) -> list[str]:
    """`deleted` candidates whose endpoints' backend addresses could still change the decision.

    A checkpoint already held for a run-state reason needs none, which keeps one collection
    from reading and probing thousands of addresses for nothing.
    """
    evidence = Evidence(runs=runs)
    return [ckpt.id for ckpt in facts.checkpoints if ckpt.status == CheckpointStatus.DELETED
            and not any(_run_blocks(lease, facts.now, evidence, lease_grace_s) for lease in
                        _not_plainly_over(facts.leases.get(ckpt.id, ()), runs, None, {}))]


def endpoints_of(facts: Facts, checkpoint_ids: Iterable[str]) -> set[str]:
    return {lease.endpoint_id for cid in checkpoint_ids for lease in facts.leases.get(cid, ())}


def summarize(decisions: Iterable[Decision]) -> dict[Action, int]:
    counts = dict.fromkeys(Action, 0)
    for d in decisions:
        counts[d.action] += 1
    return counts
