"""Self-healing, with nothing in the test driving it.

A SIGKILLed engine is reported by its serve run, which hands the decision to the one
reconciler at once; a SIGKILLed serve-run process (its engine dies with it) reports
nothing, so only the *scheduled* reconcile can see it — Prefect says the run crashed and
its record went quiet — and restart it. A client calls the stable URL across each kill
and recovery. The restart-storm limit is a policy check, so that part calls the
reconcile flow itself to keep its duration bounded.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from flows.reconcile_endpoints import reconcile_endpoints
from tests.e2e.conftest import E2EStack, paused_deployment
from tests.e2e.engine_tools import engine_leader, flow_run_process
from tests.e2e.traffic import ClientLoop

pytestmark = pytest.mark.e2e

RECOVERY_BOUND_S = 300  # kill → healthy again, on this 2-core machine (with a reconcile interval)


def wait_healthy_again(e2e: E2EStack, name: str, generation_above: int, timeout_s: float) -> float:
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        ep = e2e.endpoint(name)
        if ep.status == "healthy" and ep.generation > generation_above:
            return time.monotonic() - started
        time.sleep(0.5)
    ep = e2e.endpoint(name)
    raise AssertionError(f"{name} not healthy again: {ep.status} g{ep.generation} {ep.reason_message}")


def first_answer_after(loop: ClientLoop, since: float, timeout_s: float = 200) -> float:
    """When the stable URL first answered 200 after `since`: the gateway's view of recovery,
    which trails the registry's `healthy` by up to a route refresh. The bound is past the
    loop's read timeout (120 s): a request caught by the kill may hang until then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ok = [s.at for s in loop.samples if s.at > since and s.outcome == "200"]
        if ok:
            return ok[0]
        time.sleep(0.2)
    raise AssertionError(f"no 200 through the stable URL within {timeout_s} s: {loop.samples[-5:]}")


def test_killed_engine_and_killed_serve_run_heal_on_their_own(e2e: E2EStack) -> None:
    e2e.ensure_worker()
    ep = e2e.create("chaos")
    assert ep.status == "healthy", ep.reason_message
    with ClientLoop(e2e.url("chaos"), e2e.api_key, "chaos", e2e.registry, ep.id) as loop:
        time.sleep(3)
        # 1. The engine dies: its serve run says so and the reconciler restarts it at once.
        leader = engine_leader(ep.id)
        assert leader is not None
        killed_at = time.monotonic()
        leader.send_signal(signal.SIGKILL)
        took = wait_healthy_again(e2e, "chaos", 0, RECOVERY_BOUND_S)
        recovered_at = first_answer_after(loop, killed_at)
        print(f"\n[healing] engine SIGKILL -> healthy again: {took:.1f} s, answering "
              f"{recovered_at - killed_at:.1f} s after the kill")
        time.sleep(5)
        # 2. The serve run's process dies (its engine with it): only the scheduled pass sees it.
        current = e2e.endpoint("chaos")
        assert current.serve_run_id is not None
        flow_proc = flow_run_process(current.serve_run_id)
        assert flow_proc is not None
        second_kill = time.monotonic()
        flow_proc.send_signal(signal.SIGKILL)
        took = wait_healthy_again(e2e, "chaos", current.generation, RECOVERY_BOUND_S)
        second_recovery = first_answer_after(loop, second_kill)
        print(f"[healing] serve-run SIGKILL -> healthy again (scheduled reconcile): {took:.1f} s, "
              f"answering {second_recovery - second_kill:.1f} s after the kill")
        time.sleep(5)
    assert loop.failures(until=killed_at) == []
    assert loop.failures(recovered_at, second_kill) == []
    after = [s for s in loop.samples if s.at > second_recovery]
    assert after and not [s for s in after if s.outcome != "200"], [s for s in after if s.outcome != "200"]
    runs = e2e.registry.runs.of(ep.id)
    assert [r.purpose for r in runs] == ["start", "restart", "restart"], runs
    assert (runs[0].end_reason, runs[1].end_reason) == ("engine_exited", "worker_lost"), runs
    assert e2e.registry.open_lease_count(ep.id) == 1  # the lease moved to the newest run
    kinds = [ev.kind for ev in e2e.registry.activity(ep.id)]
    assert kinds.count("restart") == 2, kinds

    # A restart storm: kill each new generation while it loads; the policy allows 3 restarts
    # in the window (two used above), then the endpoint fails with the reason.
    for _ in range(6):
        if e2e.endpoint("chaos").status == "failed":
            break
        deadline = time.monotonic() + 120
        proc = engine_leader(ep.id)
        while proc is None and time.monotonic() < deadline:
            reconcile_endpoints(backoff_seconds=0)
            if e2e.endpoint("chaos").status == "failed":
                break
            time.sleep(0.5)
            proc = engine_leader(ep.id)
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            time.sleep(2)
        reconcile_endpoints(backoff_seconds=0)
    final = e2e.wait_status("chaos", {"failed"}, timeout_s=90)
    assert final.reason_code == "restart_limit", (final.status, final.reason_code, final.reason_message)
    assert "restarts" in (final.reason_message or "")
    time.sleep(1)
    assert engine_leader(ep.id) is None
    assert e2e.stop("chaos", remove=True) == "removed"
    assert e2e.registry.open_lease_count(ep.id) == 0


def test_a_killed_worker_is_detected_and_restarted(e2e: E2EStack) -> None:
    pid = e2e.ensure_worker()
    # The scheduled reconcile would race this one to the restart: only this call may act.
    with paused_deployment("reconcile-endpoints/self-healing"):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        rows = reconcile_endpoints()
    assert any(r["decision"] == "worker_restarted" for r in rows), rows
    state = e2e.stack.read_state()
    assert state is not None and state.workers["cpu-dev"] != pid
    assert psutil.pid_exists(state.workers["cpu-dev"])
