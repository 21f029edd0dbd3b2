"""The e2e teardown's leftover check, on real processes: a leaked engine makes it fail, a clean session passes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.leftovers import Leftover, check_leftovers, find_leftovers, mounts_under

SLEEP = shutil.which("sleep") or "/bin/sleep"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "ie-test-scratch"
    (path / "bin").mkdir(parents=True)
    return path


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # stopped by PID whatever the test did
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def leak_engine(data_dir: Path, spawned: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A real `sleep` whose command line names the data dir and vllm, as an engine's would."""
    engine = data_dir / "bin" / "vllm"
    engine.symlink_to(SLEEP)
    proc = subprocess.Popen([str(engine), "600"], start_new_session=True)
    spawned.append(proc)
    return proc


def test_a_leaked_engine_is_reported_and_fails_the_teardown(
        data_dir: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    proc = leak_engine(data_dir, spawned)
    found = find_leftovers(data_dir)
    assert [(f.kind, f.pid) for f in found] == [("engine", proc.pid)], found
    assert proc.poll() is None  # finding touches nothing
    with pytest.raises(AssertionError, match=rf"engine: {proc.pid} .*vllm 600"):
        check_leftovers(data_dir, settle_s=0)
    # The failure came after the cleanup: the engine is gone and nothing is left to report.
    assert proc.poll() is not None and not psutil.pid_exists(proc.pid)
    assert find_leftovers(data_dir) == []


def test_nothing_left_means_the_teardown_passes(data_dir: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    proc = leak_engine(data_dir, spawned)
    proc.kill()
    proc.wait(10)
    assert find_leftovers(data_dir) == []
    check_leftovers(data_dir, settle_s=0)  # raises on any leftover
    assert not data_dir.exists() or os.environ.get("IE_KEEP_TEST_DATA")


def test_serve_run_and_stack_processes_are_reported(data_dir: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    """A flow-run process (`python -m prefect.engine`, the session's data dir in its environment)."""
    flow_run = subprocess.Popen(["bash", "-c", f'exec -a "{sys.executable} -m prefect.engine" {SLEEP} 600'],
                                env={**os.environ, "IE_DATA_DIR": str(data_dir)}, start_new_session=True)
    unrelated = subprocess.Popen(["bash", "-c", f'exec -a "python -m prefect.engine" {SLEEP} 600'],
                                 env={k: v for k, v in os.environ.items() if k not in ("IE_DATA_DIR", "PREFECT_HOME")},
                                 start_new_session=True)
    stack = subprocess.Popen([SLEEP, "600"], start_new_session=True)
    spawned += [flow_run, unrelated, stack]
    psutil.Process(flow_run.pid).cmdline()  # exec -a has happened once the name reads back
    found = {(f.kind, f.pid) for f in find_leftovers(data_dir, stack_pids=[stack.pid])}
    assert ("serve run", flow_run.pid) in found and ("stack process", stack.pid) in found
    assert unrelated.pid not in {pid for _, pid in found}  # another session's flow is not ours


def test_mounts_are_read_from_mountinfo(tmp_path: Path) -> None:
    assert "/proc" in mounts_under(Path("/proc"))
    assert mounts_under(tmp_path) == []
    info = tmp_path / "mountinfo"
    info.write_text(f"36 35 0:33 / {tmp_path}/data/with\\040space rw - tmpfs x rw\n"
                    f"37 35 0:34 / {tmp_path}/data/a/b ro - bind y ro\n"
                    f"38 35 0:35 / {tmp_path}/other rw - tmpfs z rw\n")
    assert mounts_under(tmp_path / "data", info) == [f"{tmp_path}/data/with space", f"{tmp_path}/data/a/b"]


def test_a_leftover_says_what_it_is() -> None:
    assert str(Leftover("mount", "/x/y", mount="/x/y")) == "mount: /x/y"
