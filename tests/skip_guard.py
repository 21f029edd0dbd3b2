"""A pytest plugin that fails the run on any skip whose reason is not on tests/skip_allowlist.txt.

A skip hides coverage silently: a daemon that fails to start, a missing component or a
renamed module would otherwise turn a test green-by-absence. Only what this kind of machine
cannot have (named in the skip reason) belongs on the allowlist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")


@dataclass(frozen=True)
class Skip:
    nodeid: str
    reason: str


def read_allowlist(path: Path = ALLOWLIST) -> list[str]:
    """One reason substring per line, `# why` after it; blank and comment-only lines are ignored."""
    entries = []
    for line in path.read_text().splitlines():
        text = line.split(" #", 1)[0].strip()
        if text and not text.startswith("#"):
            entries.append(text)
    return entries


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def unexpected(skips: list[Skip], allowed: list[str]) -> list[Skip]:
    return [s for s in skips if not any(entry in s.reason for entry in allowed)]


class SkipGuard:
    """Collects every skip of the session; fails it on any reason not on the allowlist."""

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed
        self.skips: list[Skip] = []

    def bad(self) -> list[Skip]:
        return unexpected(self.skips, self.allowed)

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append(Skip(report.nodeid, skip_reason(report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.bad() and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        bad = self.bad()
        terminalreporter.section("skip allowlist")
        terminalreporter.line(f"{len(self.skips)} skipped, {len(bad)} unexpected "
                              f"(allowed reasons: tests/{ALLOWLIST.name})")
        for s in bad:
            terminalreporter.line(f"UNEXPECTED SKIP {s.nodeid}: {s.reason}", red=True)
        if bad:
            terminalreporter.line("the run fails: add a reason to the allowlist only for what this "
                                  "kind of machine cannot have", red=True)


def install(config: pytest.Config) -> None:
    """Register the guard (tests/conftest.py does; `-p tests.skip_guard` does it too)."""
    if not config.pluginmanager.has_plugin("skip-guard"):
        config.pluginmanager.register(SkipGuard(read_allowlist()), "skip-guard")


pytest_configure = install
