"""An endpoint outlives its control plane: Prefect SIGKILLed for 120 s costs no request.

A client calls the stable URL at 2.5 requests/s throughout; the engine keeps its PID,
the status stays `healthy`, and `endpoints up` brings Prefect back without a traceback
and without restarting anything that was serving. Also here: `ready` means it can
generate (the first completion after create succeeds), and a precision the CPU engine
cannot serve is refused before anything is written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows.create_endpoint import create_endpoint
from inference_endpoints.adapters.processes import alive
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.persistence.models import Endpoint
from tests.e2e.conftest import SHARED_NAME, E2EStack
from tests.e2e.engine_tools import engine_leader
from tests.e2e.traffic import ClientLoop

pytestmark = pytest.mark.e2e

OUTAGE_S = 120  # the old design stopped the engine 68 s into an outage; 4 reconcile periods


def endpoints_cli(e2e: E2EStack, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("endpoints")
    env = {**e2e.stack.env(), "IE_API_KEY": e2e.api_key, "COLUMNS": "200"}
    return subprocess.run([str(cli), *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s, check=False)


def test_bfloat16_on_the_cpu_engine_is_refused_with_the_reason(e2e: E2EStack) -> None:
    before = e2e.registry.counts()
    with pytest.raises(RequestInvalid) as caught:
        create_endpoint(name="bf16", checkpoint="demo-tiny-llama", instance="cpu-dev",
                        max_context=512, precision="bfloat16", org=e2e.org_name)  # type: ignore[arg-type]
    problem = caught.value.problems[0]
    assert (problem.field, problem.code) == ("precision", "precision_unsupported")
    assert "first completion" in problem.message and "float32" in (problem.hint or "")
    assert e2e.registry.counts() == before  # nothing written, no lease taken


def test_prefect_outage_drops_no_request_and_restarts_nothing(e2e: E2EStack,
                                                             shared_endpoint: Endpoint) -> None:
    ep, name = shared_endpoint, SHARED_NAME
    runs_before = len(e2e.registry.runs.of(ep.id))
    # Healthy means the stable URL generates at once (create waited for the gateway too).
    first = httpx.post(f"{e2e.url(name)}/v1/completions", timeout=30,
                       headers={"Authorization": f"Bearer {e2e.api_key}"},
                       json={"model": name, "prompt": "Hi", "max_tokens": 2})
    assert first.status_code == 200, first.text
    leader = engine_leader(ep.id)
    assert leader is not None
    state = e2e.stack.read_state()
    assert state is not None and state.prefect_pid
    with ClientLoop(e2e.url(name), e2e.api_key, name, e2e.registry, ep.id) as loop:
        time.sleep(10)
        killed_at = time.monotonic()
        os.killpg(state.prefect_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(state.prefect_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not e2e.stack.prefect_healthy()
        time.sleep(OUTAGE_S)
        back_at = time.monotonic()
        up = endpoints_cli(e2e, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Traceback" not in up.stdout + up.stderr
        assert e2e.stack.prefect_healthy()
        time.sleep(40)  # at least one scheduled reconcile pass after Prefect is back
    during = loop.count(killed_at, back_at)
    print(f"\n[outage] {during} requests while Prefect was down for {back_at - killed_at:.0f} s, "
          f"{loop.count(back_at)} after; failures: {len(loop.failures())}")
    assert during >= 2 * OUTAGE_S, during  # the loop really ran at >= 2 requests/s
    assert loop.failures() == [], loop.failures()[:5]
    assert {s.status for s in loop.samples} == {"healthy"}
    assert leader.is_running() and engine_leader(ep.id).pid == leader.pid  # type: ignore[union-attr]
    runs = e2e.registry.runs.of(ep.id)
    assert len(runs) == runs_before and runs[-1].ended_at is None, [(r.generation, r.end_reason) for r in runs]
    assert e2e.endpoint(name).status == "healthy"  # and it stays up for the gateway tests
