"""Long-running helper processes: started in their own session with output to a log file, stopped by PID.

Same rules as the rest of the local stack: never by name, SIGTERM to the process
group first, SIGKILL after a grace period. PIDs wrap (`pid_max` is 32768 on these machines,
and a test run spawns tens of thousands of processes), so a process this one spawned is
remembered with its start time: once that PID names a younger process, ours is gone and the
newcomer is never signalled. The start time is the kernel's tick count since boot
(`/proc/PID/stat`), not `psutil`'s wall-clock `create_time()`: that one adds a boot time
recomputed on every read, which moves when NTP slews the clock, and a live child judged
"gone" was once never stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

_SPAWNED: dict[int, int] = {}  # pid -> start ticks of the process this one spawned under it


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (fixed for its life); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return int(fields[19])  # field 22 of proc_pid_stat(5); fields[0] is field 3


def spawn(args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(env or os.environ),
                                cwd=cwd, start_new_session=True)
    ticks = start_ticks(proc.pid)
    if ticks is not None:  # gone already: nothing will be signalled anyway
        _SPAWNED[proc.pid] = ticks
    return proc.pid


def same_process(pid: int) -> bool:
    """False when `pid` now names another process than the one spawned under it here."""
    started = _SPAWNED.get(pid)
    if started is None:
        return True  # not spawned here: callers check identity otherwise (`is_ours`)
    return start_ticks(pid) == started


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and same_process(pid)
    except psutil.NoSuchProcess:
        return False


def stop_group(pid: int | None, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL it after `grace_s`; reap if ours."""
    if not alive(pid):
        _reap(pid)
        return
    assert pid is not None
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
        if not alive(pid):
            break
    _reap(pid)


def _reap(pid: int | None) -> None:
    if pid and same_process(pid):  # never reap (or wait on) a stranger that took the PID
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def wait_until(ready: Callable[[], bool], pid: int, what: str, log_path: Path,
               timeout_s: float) -> None:
    """Poll `ready` until it holds; fail early (with the log's tail) if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive(pid):
            _reap(pid)
            raise RuntimeError(f"{what} exited at start; last log lines:\n{log_tail(log_path)}")
        time.sleep(0.1)
    stop_group(pid)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s; see {log_path}")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except FileNotFoundError:
        return "(no log)"
