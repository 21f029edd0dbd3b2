"""A create beyond its work pool's capacity is queued (saying why), never timed out, and starts
when a slot frees.

Real Prefect: the `cpu-dev` pool's concurrency limit is lowered to the slots already held
(the shared endpoint holds one), so Prefect's own scheduler keeps the new serve run
`Scheduled`; the create is made with a startup timeout far shorter than the wait, through
the CLI as a user runs it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_endpoints.persistence.models import Endpoint
from tasks.runs import read_pool_slots
from tests.e2e.conftest import E2EStack, engine_processes

pytestmark = pytest.mark.e2e

POOL = "cpu-dev"
NAME = "queued"
# Far shorter than the time it spends queued; long enough for a worker to start its serve
# run once a slot frees (the timeout counts again from the last time it was seen queued).
STARTUP_TIMEOUT_S = 20


@contextlib.contextmanager
def pool_limit(pool: str, limit: int) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    with get_client(sync_client=True) as client:
        before = client.read_work_pool(pool).concurrency_limit
        client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))
    try:
        yield
    finally:
        with get_client(sync_client=True) as client:
            client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=before))


def wait_for(e2e: E2EStack, what: str, ok: object, timeout_s: float) -> Endpoint:
    deadline = time.monotonic() + timeout_s
    ep = e2e.registry.find_endpoint(e2e.org_id, NAME)
    while time.monotonic() < deadline:
        ep = e2e.registry.find_endpoint(e2e.org_id, NAME)
        if ep is not None and ok(ep):  # type: ignore[operator]
            return ep
        time.sleep(0.2)
    raise AssertionError(f"{NAME}: {what} not seen in {timeout_s} s; last: "
                         f"{ep.status if ep else None} {ep.reason_code if ep else ''} "
                         f"{ep.reason_message if ep else ''}")


def test_a_create_beyond_the_pools_limit_is_queued_and_starts_when_a_slot_frees(
        e2e: E2EStack, shared_endpoint: Endpoint) -> None:
    _, holders = read_pool_slots(POOL)
    shared_run = e2e.endpoint(shared_endpoint.name).serve_run_id
    assert holders, "the shared endpoint's serve run should hold a slot"
    cli = Path(sys.executable).with_name("endpoints")
    env = {**e2e.stack.env(), "IE_API_KEY": e2e.api_key, "COLUMNS": "200"}
    with pool_limit(POOL, len(holders)):
        create = subprocess.Popen(
            [str(cli), "create", NAME, "--checkpoint", "demo-tiny-llama", "--instance", POOL,
             "--max-context", "1024", "--precision", "float32",
             "--startup-timeout-s", str(STARTUP_TIMEOUT_S)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            ep = wait_for(e2e, "queued_for_capacity", lambda e: e.reason_code == "queued_for_capacity", 90)
            queued_at = time.monotonic()
            message = ep.reason_message or ""
            print(f"queued: {message}")
            assert ep.status == "deploying", ep.status
            assert f"work pool {POOL}" in message and f"{len(holders)} of its {len(holders)} slots" in message
            assert holders[0] in message, (holders, message)
            assert "prefect work-pool set-concurrency-limit" in (ep.reason_hint or "")
            # It keeps saying so well past its startup timeout: no deploy_timeout while queued.
            while time.monotonic() - queued_at < 1.5 * STARTUP_TIMEOUT_S:
                ep = e2e.endpoint(NAME)
                assert (ep.status, ep.reason_code) == ("deploying", "queued_for_capacity"), \
                    (ep.status, ep.reason_code, ep.reason_message)
                time.sleep(1)
            shown = subprocess.run([str(cli), "show", NAME], env=env, capture_output=True, text=True,
                                   timeout=60)
            assert "queued for capacity" in shown.stdout, shown.stdout + shown.stderr
        except BaseException:
            create.kill()
            print(create.communicate()[0])
            raise
    # The limit is back: the next pass sees a free slot and the worker starts it.
    ep = wait_for(e2e, "the engine starting", lambda e: e.status in ("loading", "healthy"), 120)
    kinds = [a.kind for a in e2e.registry.activity(ep.id, limit=200)]
    assert "queued" in kinds and "unqueued" in kinds, kinds
    assert e2e.endpoint(shared_endpoint.name).serve_run_id == shared_run, "the holder was disturbed"
    assert e2e.stop(NAME) == "stopped"
    output, _ = create.communicate(timeout=60)
    print(output)
    assert create.returncode != 0  # it was stopped before it served: the CLI says so
    assert f"Endpoint {NAME} stopp" in output and "stopped_by_user" in output, output  # stopping or stopped
    assert e2e.registry.open_lease_count(ep.id) == 0
    assert not [p for p in engine_processes(e2e.settings.data_dir) if ep.id in " ".join(p.cmdline())]
    assert e2e.stop(NAME, remove=True) == "removed"
