"""Chaos: a killed engine is restarted automatically; a dead worker is restarted; a restart
storm ends `failed` with the reason. The reconcile flow runs in-process here (as its 30 s
schedule would) so the bounds below do not depend on when the schedule fires."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from flows.reconcile_endpoints import reconcile_endpoints
from inference_endpoints.runtime.process import ENDPOINT_ENV
from tests.e2e.conftest import E2EStack

pytestmark = pytest.mark.e2e

RESTART_BOUND_S = 150  # kill → healthy again, on this 2-core machine


def engine_leader(endpoint_id: str) -> psutil.Process | None:
    """The engine's API server: the process carrying the endpoint label whose parent does not."""
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(ENDPOINT_ENV) != endpoint_id:
                continue
            parent = proc.parent()
            if parent is None or parent.environ().get(ENDPOINT_ENV) != endpoint_id:
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def reconcile_until(e2e: E2EStack, name: str, statuses: set[str], timeout_s: float,
                    **policy: int) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reconcile_endpoints(**policy)
        status = e2e.endpoint(name).status
        if status in statuses:
            return status
        time.sleep(2)
    raise AssertionError(f"{name} never reached {statuses}; it is {e2e.endpoint(name).status}")


def test_killed_engine_is_restarted_then_a_restart_storm_fails(e2e: E2EStack) -> None:
    e2e.ensure_worker()
    ep = e2e.create("chaos")
    assert ep.status == "healthy", ep.reason_message
    leader = engine_leader(ep.id)
    assert leader is not None
    first_run = ep.serve_run_id

    killed_at = time.monotonic()
    leader.send_signal(signal.SIGKILL)
    e2e.wait_status("chaos", {"unhealthy"}, timeout_s=20)
    assert e2e.endpoint("chaos").reason_code == "engine_exited"
    reconcile_until(e2e, "chaos", {"healthy"}, RESTART_BOUND_S, backoff_seconds=0)
    recovered = time.monotonic() - killed_at
    print(f"engine SIGKILL -> healthy again: {recovered:.1f} s")
    again = e2e.endpoint("chaos")
    assert again.serve_run_id != first_run and again.generation == 1
    kinds = [ev.kind for ev in e2e.registry.activity(ep.id)]
    assert "restart" in kinds
    assert e2e.registry.open_lease_count(ep.id) == 1  # the lease moved to the new run

    # A restart storm: kill each new generation while it loads; the policy allows 3 restarts
    # in the window, then the endpoint fails with the reason.
    for _ in range(5):
        current = e2e.endpoint("chaos")
        if current.status == "failed":
            break
        deadline = time.monotonic() + 60
        proc = engine_leader(ep.id)
        while proc is None and time.monotonic() < deadline:
            reconcile_endpoints(backoff_seconds=0)
            if e2e.endpoint("chaos").status == "failed":
                break
            time.sleep(0.5)
            proc = engine_leader(ep.id)
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            time.sleep(1)
        reconcile_endpoints(backoff_seconds=0)
    final = e2e.wait_status("chaos", {"failed"}, timeout_s=60)
    assert final.reason_code == "restart_limit", (final.status, final.reason_code, final.reason_message)
    assert "restarts" in (final.reason_message or "")
    time.sleep(1)
    assert engine_leader(ep.id) is None
    assert e2e.stop("chaos", remove=True) == "removed"
    assert e2e.registry.open_lease_count(ep.id) == 0


def test_a_killed_worker_is_detected_and_restarted(e2e: E2EStack) -> None:
    pid = e2e.ensure_worker()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    rows = reconcile_endpoints()
    assert any(r["decision"] == "worker_restarted" for r in rows), rows
    state = e2e.stack.read_state()
    assert state is not None and state.workers["cpu-dev"] != pid
    assert psutil.pid_exists(state.workers["cpu-dev"])
