"""Nothing the control plane starts depends on the process that started it.

- `endpoints create` interrupted (SIGINT) while its endpoint is deploying, and another
  while loading: both end healthy within the startup timeout plus one reconcile interval;
  none is left pending, deploying or loading.
(A rolling replacement whose `on-finetune-completed` run is killed, and one whose endpoint
is stopped mid-way, are in test_finetune.py, on the endpoint the fine-tune event made.)
Nothing here calls the reconciler: the scheduled pass and the serve runs' own reports do it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import E2EStack

pytestmark = pytest.mark.e2e

RECONCILE_INTERVAL_S = 30


def cli_create(e2e: E2EStack, name: str) -> subprocess.Popen[str]:
    cli = Path(sys.executable).with_name("endpoints")
    env = {**e2e.stack.env(), "IE_API_KEY": e2e.api_key, "COLUMNS": "200"}
    return subprocess.Popen([str(cli), "create", name, "--checkpoint", "demo-tiny-llama",
                             "--instance", "cpu-dev", "--max-context", "1024", "--precision", "float32"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_status(e2e: E2EStack, name: str, wanted: set[str], timeout_s: float, poll_s: float = 0.1) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ep = e2e.registry.find_endpoint(e2e.org_id, name)
        if ep is not None and ep.status in wanted:
            return ep.status
        time.sleep(poll_s)
    ep = e2e.registry.find_endpoint(e2e.org_id, name)
    raise AssertionError(f"{name} did not reach {wanted}: {ep.status if ep else 'not recorded'}")


def test_interrupted_creates_still_end_healthy(e2e: E2EStack) -> None:
    """Two creates at once (two vLLM starts overlap on two cores): one is interrupted while
    deploying, the other while loading."""
    timeout = 300 + RECONCILE_INTERVAL_S  # cpu-dev's startup timeout plus one reconcile interval
    phases = {"sigint-deploying": {"deploying", "loading", "healthy"}, "sigint-loading": {"loading"}}
    procs = {name: cli_create(e2e, name) for name in phases}
    outputs: dict[str, str] = {}
    try:
        for name, wanted in phases.items():
            seen = wait_status(e2e, name, wanted, timeout_s=180, poll_s=0.05)
            procs[name].send_signal(signal.SIGINT)
            outputs[name] = f"SIGINT at {seen}"
        for name, proc in procs.items():
            output, _ = proc.communicate(timeout=60)
            outputs[name] += f": exit {proc.returncode}\n{output}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, proc in procs.items():
        print(f"\n[durable] {name}: {outputs[name]}")
        assert proc.returncode == 130, outputs[name]
        assert "Traceback" not in outputs[name]
        assert f"endpoints show {name}" in outputs[name] and f"endpoints stop {name}" in outputs[name]
    for name in phases:
        final = wait_status(e2e, name, {"healthy", "failed"}, timeout_s=timeout, poll_s=1)
        ep = e2e.endpoint(name)
        assert final == "healthy", (name, ep.status, ep.reason_code, ep.reason_message)
    for name in phases:
        assert e2e.stop(name) == "stopped"
