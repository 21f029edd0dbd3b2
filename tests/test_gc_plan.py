"""The pure planner, table-driven: facts in, one decision with a reason out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from inference_endpoints.core.gc import (
    Action,
    CheckpointFact,
    Evidence,
    Facts,
    LeaseFact,
    RunFact,
    RunState,
    checkpoints_to_locate,
    endpoints_of,
    plan,
    runs_to_read,
    summarize,
)
from inference_endpoints.core.status import CheckpointStatus

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
GRACE = 600.0
URL = "http://127.0.0.1:9001"
RUNNING = RunFact(RunState.ACTIVE, "Running")
SCHEDULED = RunFact(RunState.ACTIVE, "Scheduled")
CANCELLING = RunFact(RunState.ACTIVE, "Cancelling")
CANCELLED = RunFact(RunState.ENDED, "Cancelled")
CRASHED = RunFact(RunState.ENDED, "Crashed")
MISSING = RunFact(RunState.MISSING, "not in Prefect")


def ckpt(status: CheckpointStatus = CheckpointStatus.DELETED, cid: str = "ckpt_a") -> CheckpointFact:
    return CheckpointFact(cid, "org_1", cid.removeprefix("ckpt_"), f"org_1/{cid}", status, 1000)


@dataclass(frozen=True)
class L:
    """A lease plus the backend address its endpoint record holds (None: none, or removed)."""

    fact: LeaseFact
    url: str | None


def lease(run: str | None = "r1", *, released: bool = False, age_s: float = 3600,
          url: str | None = URL, ep: str = "ep-a") -> L:
    return L(LeaseFact("ckpt_a", f"id_{ep}", ep, run, released, NOW - timedelta(seconds=age_s)), url)


def addresses(leases: list[L]) -> dict[str, str]:
    return {x.fact.endpoint_id: x.url for x in leases if x.url is not None}


@dataclass
class Case:
    id: str
    leases: list[L]
    runs: dict[str, RunFact] | None
    answering: dict[str, bool] = field(default_factory=dict)
    expect: Action = Action.RECLAIM
    reason_has: str = ""
    status: CheckpointStatus = CheckpointStatus.DELETED
    located: bool = True


CASES = [
    Case("never leased", [], {}, reason_has="no endpoint ever leased it"),
    Case("open lease, run running", [lease()], {"r1": RUNNING}, {URL: True}, Action.HOLD, "is Running"),
    Case("open lease, run scheduled", [lease(url=None)], {"r1": SCHEDULED}, {}, Action.HOLD, "Scheduled"),
    Case("open lease, run cancelling", [lease()], {"r1": CANCELLING}, {URL: False}, Action.HOLD,
         "Cancelling"),
    Case("released, run ended, backend gone", [lease(released=True)], {"r1": CANCELLED}, {URL: False}),
    Case("released, run ended, backend still answers", [lease(released=True)], {"r1": CANCELLED},
         {URL: True}, Action.HOLD, "still answers"),
    Case("crashed run, lease never released, backend gone", [lease()], {"r1": CRASHED}, {URL: False},
         reason_has="ended and their backends are gone"),
    Case("crashed run, zombie engine still answers", [lease()], {"r1": CRASHED}, {URL: True},
         Action.HOLD, "still answers"),
    Case("ended run, backend not probed counts as answering", [lease()], {"r1": CRASHED}, {},
         Action.HOLD, "still answers"),
    Case("ended run, addresses not located: hold", [lease()], {"r1": CRASHED}, {URL: False},
         Action.HOLD, "address was not checked", located=False),
    Case("held by its run, addresses not located: the run is the reason", [lease(), lease("r2", ep="b")],
         {"r1": CRASHED, "r2": RUNNING}, {}, Action.HOLD, "r2 is Running", located=False),
    Case("endpoint record removed: run state decides", [lease(released=True, url=None)],
         {"r1": CANCELLED}, {}),
    Case("run state not read", [lease()], {}, {URL: False}, Action.HOLD, "unknown"),
    Case("run missing from Prefect, lease open", [lease()], {"r1": MISSING}, {URL: False}, Action.HOLD,
         "not in Prefect"),
    Case("run missing from Prefect after release", [lease(released=True)], {"r1": MISSING}, {URL: False}),
    Case("no run yet, young lease", [lease(None, age_s=30, url=None)], {}, {}, Action.HOLD,
         "no serve run yet"),
    Case("no run yet, young lease even if released", [lease(None, released=True, age_s=30, url=None)],
         {}, {}, Action.HOLD, "no serve run yet"),
    Case("no run, old open lease", [lease(None, age_s=GRACE + 1, url=None)], {}, {}, Action.HOLD,
         "create run may have died"),
    Case("no run, old released lease", [lease(None, released=True, age_s=GRACE + 1, url=None)], {}, {}),
    Case("no run, old released, but something answers at its backend",
         [lease(None, released=True, age_s=GRACE + 1)], {}, {URL: True}, Action.HOLD, "still answers"),
    Case("released lease, run still active, its engine still loading (refuses connections)",
         [lease(released=True)], {"r1": RUNNING}, {URL: False}, Action.HOLD, "is Running"),
    Case("two endpoints hold it: both named", [lease("r1"), lease("r2", ep="ep-b")],
         {"r1": RUNNING, "r2": SCHEDULED}, {URL: True}, Action.HOLD, "held by ep-a, ep-b"),
    Case("one of two runs still active", [lease("r1", released=True), lease("r2", ep="ep-b")],
         {"r1": CANCELLED, "r2": RUNNING}, {URL: False}, Action.HOLD, "held by ep-b"),
    Case("every run of a history ended", [lease("r1", released=True), lease("r2", released=True, ep="b")],
         {"r1": CANCELLED, "r2": CRASHED}, {URL: False}, reason_has="all 2 run(s)"),
    Case("Prefect unreachable: skip, even with no lease", [], None, {}, Action.SKIP, "Prefect unreachable"),
    Case("Prefect unreachable with leases", [lease(released=True)], None, {URL: False}, Action.SKIP,
         "Prefect unreachable"),
    Case("reclaiming: finish what an earlier run decided", [lease()], None, {}, Action.FINISH,
         "earlier collection", CheckpointStatus.RECLAIMING),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision(case: Case) -> None:
    facts = Facts([ckpt(case.status)], {"ckpt_a": [x.fact for x in case.leases]}, NOW)
    located = frozenset({"ckpt_a"} if case.located else ())
    evidence = Evidence(case.runs, located, addresses(case.leases), case.answering,
                        None if case.runs is not None else "connect refused")
    [decision] = plan(facts, evidence, lease_grace_s=GRACE)
    assert decision.action == case.expect, decision.reason
    assert case.reason_has in decision.reason + " ".join(h.why for h in decision.holders)
    assert decision.checkpoint == facts.checkpoints[0]  # reports name the checkpoint decided
    if decision.action == Action.HOLD:
        assert decision.holders and all(h.endpoint_name for h in decision.holders)
        # Each holder names its lease's endpoint and run (what `gc` and the API print).
        leased = {(x.fact.endpoint_name, x.fact.endpoint_id, x.fact.flow_run_id) for x in case.leases}
        assert {(h.endpoint_name, h.endpoint_id, h.flow_run_id) for h in decision.holders} <= leased
    if decision.action == Action.RECLAIM:  # what mark_reclaiming re-checks under the row lock
        assert decision.lease_runs == tuple(sorted(x.fact.flow_run_id or "" for x in case.leases))


def test_naive_timestamps_are_taken_as_utc() -> None:
    young = LeaseFact("ckpt_a", "e", "ep", None, True, (NOW - timedelta(seconds=5)).replace(tzinfo=None))
    [d] = plan(Facts([ckpt()], {"ckpt_a": [young]}, NOW), Evidence({}, frozenset({"ckpt_a"})),
               lease_grace_s=GRACE)
    assert d.action == Action.HOLD


def test_each_run_is_read_once() -> None:
    facts = Facts([ckpt(), ckpt(CheckpointStatus.RECLAIMING, "ckpt_b")],
                  {"ckpt_a": [lease("r1").fact, lease("r1", ep="x").fact, lease(None).fact],
                   "ckpt_b": [lease("r9").fact]}, NOW)
    assert sorted(runs_to_read(facts)) == ["r1", "r9"]


def test_addresses_are_located_only_where_run_states_do_not_decide() -> None:
    facts = Facts([ckpt(), ckpt(cid="ckpt_b"), ckpt(CheckpointStatus.RECLAIMING, "ckpt_c")],
                  {"ckpt_a": [lease("r1").fact, lease("r2", ep="b").fact],
                   "ckpt_b": [lease("r3", ep="c").fact, lease("r4", ep="d").fact]}, NOW)
    runs = {"r1": RUNNING, "r2": CANCELLED, "r3": CANCELLED, "r4": CRASHED}
    located = checkpoints_to_locate(facts, runs, lease_grace_s=GRACE)
    assert located == ["ckpt_b"]
    assert endpoints_of(facts, located) == {"id_c", "id_d"}


def test_reclaim_decisions_carry_the_lease_runs_they_saw() -> None:
    leases = [lease("r2", released=True).fact, lease(None, released=True, age_s=GRACE + 1).fact]
    [d] = plan(Facts([ckpt()], {"ckpt_a": leases}, NOW),
               Evidence({"r2": CANCELLED}, frozenset({"ckpt_a"})), lease_grace_s=GRACE)
    assert d.action == Action.RECLAIM and d.lease_runs == ("", "r2")


def test_many_checkpoints_in_order_and_summary() -> None:
    cks = [ckpt(cid=f"ckpt_{i}") for i in range(5)]
    leases = {"ckpt_1": [lease("r1").fact], "ckpt_3": [lease("r3", released=True).fact]}
    runs = {"r1": RUNNING, "r3": CANCELLED}
    evidence = Evidence(runs, frozenset(c.id for c in cks), {"id_ep-a": URL}, {URL: False})
    decisions = plan(Facts(cks, leases, NOW), evidence, lease_grace_s=GRACE)
    assert [d.checkpoint.id for d in decisions] == [c.id for c in cks]
    assert [d.action for d in decisions] == [Action.RECLAIM, Action.HOLD, Action.RECLAIM,
                                             Action.RECLAIM, Action.RECLAIM]
    assert summarize(decisions) == {Action.RECLAIM: 4, Action.HOLD: 1, Action.FINISH: 0, Action.SKIP: 0}
