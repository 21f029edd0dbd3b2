"""`endpoints logs` on a real serve run: vLLM's own lines, found through the run's record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inference_endpoints.persistence.models import Endpoint
from tests.e2e.conftest import E2EStack

pytestmark = pytest.mark.e2e


def test_logs_print_the_engines_own_lines(e2e: E2EStack, shared_endpoint: Endpoint) -> None:
    ep = e2e.endpoint(shared_endpoint.name)
    run = e2e.registry.runs.get(ep.live_run or "")
    assert run is not None and run.log_path and Path(run.log_path).is_file(), run
    cli = Path(sys.executable).with_name("endpoints")
    result = subprocess.run([str(cli), "logs", ep.name, "--lines", "100000"],
                            env={**e2e.stack.env(), "IE_API_KEY": e2e.api_key},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Application startup complete" in result.stdout, result.stdout[-2000:]
    assert "vllm" in result.stdout.lower()
    assert run.id in result.stderr and "Traceback" not in result.stderr
    # The engine keeps logging (probes, scrapes): the file begins with what was printed.
    assert result.stdout.splitlines()[:50] == Path(run.log_path).read_text(errors="replace").splitlines()[:50]
