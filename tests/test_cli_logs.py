"""`endpoints logs`: the engine log of the live run (or a chosen generation), piped as a script
reads it; `--follow` streams until the run ends; a log on another host is named, not guessed.

Real CLI processes on a real registry; the log files are written as a serve run writes them
(the serve run records where, `flows/serve_endpoint.py`). No Prefect or vLLM is needed.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from pathlib import Path
from typing import IO

import pytest

from inference_endpoints.core.lifecycle import Purpose, Role
from inference_endpoints.core.status import EndpointStatus, ReasonCode
from inference_endpoints.persistence.registry import Registry
from tests.cli_support import IsolatedStack
from tests.lifecycle_support import put_status
from tests.test_gateway_units import add_endpoint


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> IsolatedStack:
    stack = IsolatedStack.make(tmp_path_factory.mktemp("logs") / "data")
    stack.register_demo()
    return stack


def org_id(registry: Registry) -> str:
    org = registry.get_org_by_name("default")
    assert org is not None
    return org.id


def with_log(registry: Registry, endpoint_id: str, path: Path, lines: list[str], host: str | None = None) -> str:
    """The live run records its log, as a serve run does before starting its engine."""
    ep = registry.get_endpoint(endpoint_id)
    assert ep is not None and ep.live_run is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    assert registry.runs.report(ep.live_run, log_path=str(path), **({"log_host": host} if host else {}))
    return ep.live_run


def test_prints_the_live_runs_last_lines_on_stdout(stack: IsolatedStack, tmp_path: Path) -> None:
    registry = stack.registry()
    ep = add_endpoint(registry, org_id(registry), "talky", status="pending")
    put_status(registry, ep, EndpointStatus.HEALTHY)
    run = with_log(registry, ep, tmp_path / "talky.log", [f"line {i}" for i in range(1, 101)])
    result = stack.cli("logs", "talky", "-n", "5")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [f"line {i}" for i in range(96, 101)]
    assert run in result.stderr and str(tmp_path / "talky.log") in result.stderr  # header, not stdout


def test_an_earlier_generation_and_a_failed_runs_reason(stack: IsolatedStack, tmp_path: Path) -> None:
    registry = stack.registry()
    ep = add_endpoint(registry, org_id(registry), "crashy", status="pending")
    put_status(registry, ep, EndpointStatus.HEALTHY)
    with_log(registry, ep, tmp_path / "g0.log", ["generation zero"])
    first = registry.get_endpoint(ep)
    assert first is not None and first.live_run is not None
    registry.runs.ended(first.live_run, ReasonCode.ENGINE_EXITED, "Worker proc died")
    added = registry.runs.add_run(ep, Role.LIVE, Purpose.RESTART, expected_live=first.live_run)
    assert added is not None
    with_log(registry, ep, tmp_path / "g1.log", ["generation one", "RuntimeError: boom"])
    assert registry.runs.give_up(ep, ReasonCode.RESTART_LIMIT, "3 restarts in 10 min", added.id)
    registry.runs.ended(added.id, ReasonCode.ENGINE_EXITED, "RuntimeError: boom")
    registry.release_leases(ep)
    registry.runs.settle(ep)
    assert stack.registry().get_endpoint(ep).status == "failed"  # type: ignore[union-attr]

    live = stack.cli("logs", "crashy")
    assert live.returncode == 0 and live.stdout.splitlines() == ["generation one", "RuntimeError: boom"]
    assert "restart_limit" in live.stderr and "ended: engine_exited: RuntimeError: boom" in live.stderr
    earlier = stack.cli("logs", "crashy", "--generation", "0")
    assert earlier.returncode == 0 and earlier.stdout.splitlines() == ["generation zero"]
    missing = stack.cli("logs", "crashy", "--generation", "7")
    assert missing.returncode == 1 and "generations: 0, 1" in missing.stderr


def test_a_log_on_another_host_is_named_and_nothing_is_made_up(stack: IsolatedStack, tmp_path: Path) -> None:
    registry = stack.registry()
    ep = add_endpoint(registry, org_id(registry), "remote", status="pending")
    put_status(registry, ep, EndpointStatus.HEALTHY)
    path = tmp_path / "elsewhere.log"
    with_log(registry, ep, path, ["x"], host="gpu-host-7")
    path.unlink()  # as on this machine: the file is on the GPU host
    result = stack.cli("logs", "remote")
    assert result.returncode == 1 and result.stdout == ""
    assert "gpu-host-7" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_no_engine_yet_and_no_endpoint(stack: IsolatedStack) -> None:
    registry = stack.registry()
    ep = add_endpoint(registry, org_id(registry), "fresh", status="pending")
    put_status(registry, ep, EndpointStatus.DEPLOYING)
    result = stack.cli("logs", "fresh")
    assert result.returncode == 1 and "has not started its engine yet" in result.stderr
    unknown = stack.cli("logs", "nope")
    assert unknown.returncode == 2 and "No endpoint 'nope'" in unknown.stderr


class Lines:
    """A process's stdout lines, read in a thread so a test can wait for each with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]):
        assert proc.stdout is not None
        self.queue: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.reader.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))

    def next(self, timeout_s: float = 60) -> str:
        """Fails after `timeout_s` (a guard against hanging, not a measurement)."""
        return self.queue.get(timeout=timeout_s)

    def rest(self) -> list[str]:
        """Everything after what was taken, once the process has closed its stdout."""
        self.reader.join(timeout=60)
        return list(self.queue.queue)


def test_follow_streams_new_lines_and_ends_with_the_run(stack: IsolatedStack, tmp_path: Path) -> None:
    registry = stack.registry()
    ep = add_endpoint(registry, org_id(registry), "streamy", status="pending")
    put_status(registry, ep, EndpointStatus.HEALTHY)
    path = tmp_path / "streamy.log"
    run = with_log(registry, ep, path, ["before"])
    follower = stack.popen("logs", "streamy", "--follow", "-n", "1")
    lines = Lines(follower)
    try:
        assert lines.next() == "before"  # what was there: it is following now
        with path.open("a") as fh:
            fh.write("while following 1\nwhile following 2\n")
        assert [lines.next(), lines.next()] == ["while following 1", "while following 2"]
        assert follower.poll() is None, "it should still be following"
        registry.runs.request_stop(ep)
        registry.runs.ended(run, ReasonCode.STOPPED_BY_USER, "stopped by user")
        registry.release_leases(ep)
        registry.runs.settle(ep)
        follower.wait(timeout=60)
        assert follower.stderr is not None
        stderr = follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, stderr
    assert lines.rest() == []  # nothing more was written
    assert "ended: stopped_by_user" in stderr


def test_one_replicas_log_by_its_number(stack: IsolatedStack, tmp_path: Path) -> None:
    from inference_endpoints.persistence.models import Endpoint

    registry = stack.registry()
    ep = add_endpoint(registry, org_id(registry), "twin", status="pending")
    put_status(registry, ep, EndpointStatus.HEALTHY)
    with_log(registry, ep, tmp_path / "r0.log", ["replica zero"])
    with registry.session() as s:
        row = s.get(Endpoint, ep)
        assert row is not None
        row.min_replicas = row.max_replicas = 2
        s.add(row)
    second = registry.runs.add_replica(ep, 1)
    assert second is not None
    (tmp_path / "r1.log").write_text("replica one\n")
    assert registry.runs.report(second.id, log_path=str(tmp_path / "r1.log"))

    one = stack.cli("logs", "twin", "--replica", "1")
    assert one.returncode == 0 and one.stdout.splitlines() == ["replica one"], one.stderr
    assert second.id in one.stderr
    zero = stack.cli("logs", "twin", "-r", "0")
    assert zero.returncode == 0 and zero.stdout.splitlines() == ["replica zero"]
    missing = stack.cli("logs", "twin", "--replica", "4")
    assert missing.returncode == 1 and "replicas: 0, 1" in missing.stderr and missing.stdout == ""
