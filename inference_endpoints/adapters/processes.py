"""Long-running helper processes: started in their own session with output to a log file, stopped by PID.

Same rules as the rest of the local stack: never by name, SIGTERM to the process
group first, SIGKILL after a grace period.
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


def spawn(args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(env or os.environ),
                                cwd=cwd, start_new_session=True)
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
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
    if pid:
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
