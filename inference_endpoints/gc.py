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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from inference_endpoints.status import CheckpointStatus


class RunState(StrEnum):
    ACTIVE = "active"  # scheduled, pending, running, paused, cancelling, ...
    ENDED = "ended"  # COMPLETED, FAILED, CRASHED, CANCELLED
    MISSING = "missing"  # Prefect has no such run (deleted, or never a Prefect run)


@dataclass(frozen=True)
class RunFact:
    state: RunState
    label: str  # Prefect's state name, for reasons ("Running", "Crashed", ...)


@dataclass(frozen=True)
class CheckpointFact:
    id: str
    org_id: str
    name: str
    location: str
    status: CheckpointStatus
    size_bytes: int


@dataclass(frozen=True)
class LeaseFact:
    checkpoint_id: str
    endpoint_id: str
    endpoint_name: str
    flow_run_id: str | None
    released: bool
    created_at: datetime | None  # needed only while flow_run_id is None
    backend_url: str | None  # from the endpoint record; None once removed or never started


@dataclass(frozen=True)
class Facts:
    """Candidates (`deleted` or `reclaiming`) and every lease ever taken on them."""

    checkpoints: Sequence[CheckpointFact]
    leases: Mapping[str, Sequence[LeaseFact]]
    now: datetime


@dataclass(frozen=True)
class Evidence:
    """What the outside world said. `runs is None` means Prefect could not be reached."""

    runs: Mapping[str, RunFact] | None
    answering: Mapping[str, bool] = field(default_factory=dict)  # backend URL -> still answers
    prefect_error: str | None = None


class Action(StrEnum):
    RECLAIM = "reclaim"  # deleted, and every run that read it is over
    FINISH = "finish"  # found `reclaiming`: an earlier collection decided and was cut short
    HOLD = "hold"  # an endpoint run may still read it
    SKIP = "skip"  # cannot decide now (Prefect unreachable)


@dataclass(frozen=True)
class Holder:
    endpoint_name: str
    endpoint_id: str
    flow_run_id: str | None
    why: str


@dataclass(frozen=True)
class Decision:
    checkpoint: CheckpointFact
    action: Action
    reason: str
    holders: tuple[Holder, ...] = ()


def plan(facts: Facts, evidence: Evidence, *, lease_grace_s: float) -> list[Decision]:
    """One decision per candidate checkpoint, in the order given."""
    return [_decide(c, facts.leases.get(c.id, ()), facts.now, evidence, lease_grace_s)
            for c in facts.checkpoints]


def _decide(ckpt: CheckpointFact, leases: Sequence[LeaseFact], now: datetime,
            evidence: Evidence, grace_s: float) -> Decision:
    if ckpt.status == CheckpointStatus.RECLAIMING:
        # Only a collector that found every run over writes `reclaiming`, and a checkpoint that
        # is not `available` can gain no lease since: the decision still holds, finish it.
        return Decision(ckpt, Action.FINISH, "an earlier collection marked it reclaiming and "
                        "stopped before finishing; deleting what is left")
    if evidence.runs is None:
        return Decision(ckpt, Action.SKIP, f"Prefect unreachable ({evidence.prefect_error}); "
                        "nothing is reclaimed while run states are unknown")
    holders = tuple(h for h in (_holder(lease, now, evidence, grace_s) for lease in leases) if h)
    if holders:
        names = ", ".join(sorted({h.endpoint_name for h in holders}))
        return Decision(ckpt, Action.HOLD, f"held by {names}", holders)
    if not leases:
        return Decision(ckpt, Action.RECLAIM, "no endpoint ever leased it")
    return Decision(ckpt, Action.RECLAIM,
                    f"all {len(leases)} run(s) that leased it ended and their backends are gone")


def _holder(lease: LeaseFact, now: datetime, evidence: Evidence, grace_s: float) -> Holder | None:
    """Why this lease still keeps the bytes, or None if its run is over."""
    why = _run_blocks(lease, now, evidence, grace_s)
    if why is None and lease.backend_url is not None and evidence.answering.get(lease.backend_url, True):
        why = f"its backend {lease.backend_url} still answers"
    if why is None:
        return None
    return Holder(lease.endpoint_name, lease.endpoint_id, lease.flow_run_id, why)


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
    """Distinct flow runs whose state matters: those of leases on `deleted` candidates."""
    deleted = {c.id for c in facts.checkpoints if c.status == CheckpointStatus.DELETED}
    return sorted({lease.flow_run_id for cid in deleted for lease in facts.leases.get(cid, ())
                   if lease.flow_run_id is not None})


def backends_to_probe(facts: Facts, runs: Mapping[str, RunFact], *, lease_grace_s: float) -> list[str]:
    """Backend URLs whose answer could still change a decision.

    A checkpoint already held for a run-state reason needs no probes, which keeps
    one collection from probing thousands of addresses for nothing.
    """
    evidence = Evidence(runs=runs)
    urls: set[str] = set()
    for ckpt in facts.checkpoints:
        if ckpt.status != CheckpointStatus.DELETED:
            continue
        leases = facts.leases.get(ckpt.id, ())
        if any(_run_blocks(lease, facts.now, evidence, lease_grace_s) for lease in leases):
            continue
        urls.update(lease.backend_url for lease in leases if lease.backend_url is not None)
    return sorted(urls)


def summarize(decisions: Iterable[Decision]) -> dict[Action, int]:
    counts = dict.fromkeys(Action, 0)
    for d in decisions:
        counts[d.action] += 1
    return counts
