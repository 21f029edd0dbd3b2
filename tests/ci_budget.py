"""A pytest plugin: failures are printed when they happen, and the run ends before its deadline.

CI kills a run that outlives its budget, and pytest prints failure details only at the end, so
a run that overran showed `F` marks and nothing else. This plugin prints each failure's report
at once, and when `IE_SUITE_DEADLINE` (epoch seconds, set by scripts/test.sh) is near it shortens
the running test's timeout and stops the session, so the summary and durations still print.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator

import pytest

TRACEBACK_CHARS = 6000  # the end of the traceback, where the assertion and its message are
SECTION_CHARS = 3000  # the end of each captured output (stdout, stderr, log)
REPORT_RESERVE_S = 180  # what the summary, the unit tests' report and teardown need


def deadline_from_env() -> float | None:
    raw = os.environ.get("IE_SUITE_DEADLINE", "").strip()
    return float(raw) - REPORT_RESERVE_S if raw else None


def remaining(deadline: float | None, now: float) -> float | None:
    """Seconds left before the run must stop; None when there is no deadline."""
    return None if deadline is None else deadline - now


def capped_timeout(configured: float, left: float | None) -> float:
    """The test's timeout, cut to what is left of the run (never below 1 s)."""
    if left is None:
        return configured
    return max(1.0, min(configured, left))


class CiBudget:
    def __init__(self, config: pytest.Config, deadline: float | None) -> None:
        self.config = config
        self.deadline = deadline
        self.session: pytest.Session | None = None

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        left = remaining(self.deadline, time.time())
        if left is not None:
            configured = float(self.config.getini("timeout") or 0) or float("inf")
            marker = item.get_closest_marker("timeout")
            if marker and marker.args:
                configured = float(marker.args[0])
            if left < configured:
                item.add_marker(pytest.mark.timeout(capped_timeout(configured, left)))
        yield

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        left = remaining(self.deadline, time.time())
        if report.when == "teardown" and left is not None and left <= 0:
            self.session_stop("the suite's deadline (IE_SUITE_DEADLINE) has passed: stopping here")
        if not report.failed:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        reporter.write_line("")
        reporter.write_sep("!", f"FAILED ({report.when}, {report.duration:.0f} s): {report.nodeid}")
        reporter.write_line(report.longreprtext[-TRACEBACK_CHARS:])
        for title, content in report.sections:
            reporter.write_line(f"--- {title} (its end) ---\n{content[-SECTION_CHARS:]}")
        reporter.write_sep("!", "the run goes on")


    def session_stop(self, reason: str) -> None:
        if self.session is not None:
            self.session.shouldstop = reason

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session


def install(config: pytest.Config) -> None:
    config.pluginmanager.register(CiBudget(config, deadline_from_env()), "ci_budget")
