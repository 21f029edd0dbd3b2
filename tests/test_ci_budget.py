"""The CI budget plugin: a failure's report prints at once, and a run stops by its deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ci_budget import REPORT_RESERVE_S, capped_timeout, deadline_from_env, remaining


@pytest.mark.parametrize(("configured", "left", "expected"), [
    (900.0, None, 900.0),     # no deadline: the configured timeout
    (900.0, 1000.0, 900.0),   # plenty left
    (900.0, 120.0, 120.0),    # cut to what is left
    (900.0, -5.0, 1.0),       # past the deadline: at least 1 s, so the test still reports
])
def test_capped_timeout(configured: float, left: float | None, expected: float) -> None:
    assert capped_timeout(configured, left) == expected


def test_deadline_keeps_room_for_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IE_SUITE_DEADLINE", "10000")
    assert deadline_from_env() == 10000 - REPORT_RESERVE_S
    assert remaining(deadline_from_env(), 9000) == 1000 - REPORT_RESERVE_S
    monkeypatch.delenv("IE_SUITE_DEADLINE")
    assert deadline_from_env() is None and remaining(None, 5.0) is None


def test_a_run_past_its_deadline_reports_and_stops(tmp_path: Path) -> None:
    """A real pytest run: the failure prints before the next test, the slow test is cut, the
    tests after it never start, and the summary still prints."""
    (tmp_path / "conftest.py").write_text(
        "from tests.ci_budget import install\n"
        "def pytest_configure(config):\n    install(config)\n")
    (tmp_path / "test_slow.py").write_text(
        "import time\n"
        "def test_a_fails():\n    assert 1 == 2, 'MARK-A'\n"
        "def test_b_slow():\n    print('MARK-B-started')\n    time.sleep(600)\n"
        "def test_c_never():\n    print('MARK-C-started')\n")
    env = {**os.environ, "IE_SUITE_DEADLINE": str(time.time() + REPORT_RESERVE_S + 4),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider",
                          "-o", "timeout=900", "--rootdir", str(tmp_path), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    out = run.stdout
    assert run.returncode != 0, out
    assert out.index("FAILED (call") < out.index("MARK-B-started"), out  # printed at once
    assert "MARK-A" in out[:out.index("MARK-B-started")], out
    assert "Timeout" in out, out               # the 600 s test was cut (else run() times out)
    assert "MARK-C-started" not in out, out    # the session stopped
    assert "short test summary" in out and "deadline" in out, out
