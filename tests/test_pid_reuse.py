"""A PID this process spawned and that later names another process is never signalled.

PIDs wrap at `pid_max` (32768 on these machines; a test run spawns tens of thousands of
processes), so a stale PID held by a fixture could name another session's Prometheus. The
reuse is simulated by recording another start time for a live process: the one thing a
reused PID differs in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

from inference_endpoints.adapters import processes


def test_a_spawned_process_is_known_by_its_start_time(tmp_path: Path) -> None:
    pid = processes.spawn([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "sleep.log")
    real = processes._SPAWNED[pid]
    try:
        assert processes.alive(pid) and processes.same_process(pid)
        processes._SPAWNED[pid] = real - 360_000  # as if ours had died and the PID been reused
        assert not processes.same_process(pid) and not processes.alive(pid)
        processes.stop_group(pid, grace_s=1)
        assert psutil.Process(pid).is_running(), "a stranger under a reused PID was signalled"
    finally:
        processes._SPAWNED[pid] = real
        processes.stop_group(pid, grace_s=5)
    assert not processes.alive(pid)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_pid_not_spawned_here_is_judged_by_its_caller() -> None:
    import os

    assert processes.same_process(os.getpid())  # not ours to judge: `is_ours` checks those


def test_start_ticks_read_the_kernels_fixed_start_even_for_an_awkward_name(tmp_path: Path) -> None:
    """The tick count is what `create_time()` is made of, less the boot time that drifts."""
    import os

    script = tmp_path / "a) b (c"  # the process name in /proc/PID/stat is in parentheses
    script.write_text("import time\ntime.sleep(60)\n")
    os.chmod(script, 0o755)
    pid = processes.spawn(["/bin/sh", "-c", f'exec -a "x) y (z" {sys.executable} "{script}"'],
                          tmp_path / "odd.log")
    try:
        ticks = processes.start_ticks(pid)
        assert ticks is not None and ticks == processes._SPAWNED[pid]
        wall = psutil.boot_time() + ticks / os.sysconf("SC_CLK_TCK")
        assert abs(psutil.Process(pid).create_time() - wall) < 2
        assert processes.start_ticks(os.getpid()) != ticks  # another process, another start
    finally:
        processes.stop_group(pid, grace_s=5)
    assert processes.start_ticks(pid) is None or not processes.alive(pid)
