"""An endpoint's engine log, found through its serve runs' records: one reading for CLI and console.

Each serve run records its log file and host when it starts its engine, so the log of
the live run (or of an earlier generation, or of one replica) is found without asking
Prefect; what cannot be read here says why, in words a user can act on.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inference_endpoints.core.engine_logs import root_cause
from inference_endpoints.persistence.models import ServeRun

MAX_TAIL_BYTES = 4 * 1024 * 1024  # a tail never reads more than this from the end of a log
MAX_TAIL_LINES = 1_000_000
BYTES_PER_LINE = 512  # a first guess at how far back `count` lines start (vLLM's lines are shorter)


@dataclass(frozen=True)
class LogTail:
    """The last lines of one serve run's engine log, or why there are none."""

    run: ServeRun
    path: Path | None
    lines: list[str] = field(default_factory=list)
    end_offset: int = 0  # where the file ended when read (to follow from)
    unreadable: str | None = None  # why the log cannot be shown here
    cause: str | None = None  # the root cause found in the log, when the run failed

    @property
    def where(self) -> str:
        r = self.run
        return (f"serve run {r.id} (generation {r.generation}, replica {r.replica}, "
                f"flow run {r.flow_run_id or '-'})")


def pick_run(runs: Sequence[ServeRun], live_id: str | None, generation: int | None = None,
             replica: int | None = None) -> ServeRun | None:
    """The asked-for generation; else a replica's newest run; else the live run, else the newest."""
    if generation is not None:
        return next((r for r in runs if r.generation == generation), None)
    if replica is not None:
        mine = [r for r in runs if r.replica == replica]
        open_runs = [r for r in mine if r.ended_at is None]
        return max(open_runs or mine, key=lambda r: r.generation, default=None)
    live = next((r for r in runs if r.id == live_id), None)
    return live or max(runs, key=lambda r: r.generation, default=None)


def last_lines(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` lines and the offset where the file ends (to follow from).

    Reads at most MAX_TAIL_BYTES from the end, so a long-lived engine's log costs the
    same to tail as a new one's.
    """
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        window = min(MAX_TAIL_BYTES, max(64 * 1024, count * BYTES_PER_LINE))
        while True:  # a window proportional to `count`, grown while it holds too few lines
            start = max(0, size - window)
            fh.seek(start)
            lines = fh.read(size - start).decode(errors="replace").splitlines()
            if start > 0 and lines:
                lines = lines[1:]  # the first one is cut
            if len(lines) >= count or start == 0 or window >= MAX_TAIL_BYTES:
                break
            window = min(MAX_TAIL_BYTES, window * 4)
    return (lines[-count:] if count > 0 else []), size


def unreadable_reason(run: ServeRun) -> str | None:
    """None when this machine can read the run's log; otherwise why not."""
    where = f"serve run {run.id} (generation {run.generation})"
    if not run.log_path:
        return f"{where} has not started its engine yet: no log so far."
    if not Path(run.log_path).is_file():
        here = socket.gethostname()
        on = f"on host {run.log_host}" if run.log_host and run.log_host != here else "on its host"
        return (f"The engine log of {where} is at {run.log_path} {on}; it is not on this machine "
                f"({here}). Read it there, or in the serve run's Prefect logs.")
    return None


def failed(run: ServeRun) -> bool:
    """The run ended without being asked to stop: its log is where the reason is."""
    return run.ended_at is not None and run.stop_requested_at is None


def tail(run: ServeRun, count: int) -> LogTail:
    """The run's last `count` lines, with the root cause when it failed."""
    reason = unreadable_reason(run)
    if reason is not None or not run.log_path:
        return LogTail(run, None, unreadable=reason)
    path = Path(run.log_path)
    if not failed(run):
        lines, end = last_lines(path, count)
        return LogTail(run, path, lines, end)
    # The root cause is the first specific exception, often well before the tail: one read of
    # the whole (bounded) log serves both.
    everything, end = last_lines(path, MAX_TAIL_LINES)
    return LogTail(run, path, everything[-count:] if count > 0 else [], end, None, root_cause(everything))
